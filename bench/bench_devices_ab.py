"""Before/after of the device simulator in one run: two trees, the same harness, interleaved.

Runs ``bench/bench_devices.py`` (this tree's file) once with each tree's interpreter, so
``vitalchain.devices`` comes from that tree's editable install while the measuring code is the
same, alternating the trees round by round so both see the same machine load. Prints one JSON
line per run and a table of medians: readings/s acknowledged by Mosquitto and CPU ms per 1,000
readings of the simulator process and of Mosquitto (from ``/proc``).

    .venv/bin/python bench/bench_devices_ab.py --base /work/wt-sim-base --rounds 2 \\
        --config 1000x5x10 --config 5000x2x10 --duration 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE / "bench_devices.py"


def run(python: Path, devices: int, rate: float, batch: int, duration: float) -> dict:
    argv = [str(python), str(BENCH), "--devices", str(devices), "--rate", str(rate),
            "--batch", str(batch), "--duration", str(duration)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=python.parent.parent.parent,
                          check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(argv)} printed no result:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the other tree (with .venv)")
    parser.add_argument("--config", action="append", default=[],
                        help="DEVICESxRATExBATCH, e.g. 1000x5x10 (repeatable)")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    trees = {"before": args.base.resolve() / ".venv/bin/python",
             "after": HERE.parent / ".venv/bin/python"}
    results: dict[tuple[str, str], list[dict]] = {}
    for config in args.config or ["1000x5x10"]:
        devices, rate, batch = config.split("x")
        for i in range(args.rounds):
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            for name in order:
                row = run(trees[name], int(devices), float(rate), int(batch), args.duration)
                row["tree"] = name
                print(json.dumps(row), flush=True)
                results.setdefault((config, name), []).append(row)
    print("\n| devices x Hz x batch | tree | offered/s | acked/s (median, runs) | simulator CPU ms "
          "per 1,000 (median, runs) | Mosquitto CPU ms per 1,000 | unacked at end |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for (config, name), rows in results.items():
        acked = [r["acked_per_s"] for r in rows]
        sim = [r["simulator_ms_per_1k"] for r in rows]
        broker = [r["mosquitto_ms_per_1k"] for r in rows]
        print(f"| {config} | {name} | {rows[0]['offered_per_s']:,.0f} | "
              f"{statistics.median(acked):,.0f} ({', '.join(f'{a:,}' for a in acked)}) | "
              f"{statistics.median(sim):.1f} ({', '.join(f'{s:.1f}' for s in sim)}) | "
              f"{statistics.median(broker):.1f} | {max(r['unacked'] for r in rows)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
