"""Run every ``bench/bench_*.py`` in turn and print what each reports (``make bench``).

    .venv/bin/python bench/run_all.py              # all benchmarks, at the sizes below
    .venv/bin/python bench/run_all.py pipeline     # only those whose name contains "pipeline"
    .venv/bin/python bench/run_all.py --list

Each benchmark runs as its own process (the same interpreter, the repository on ``PYTHONPATH``) so
one that crashes or leaves state behind cannot skew the next. Sizes are chosen so the whole set
takes a few minutes on a small machine and still says something: big enough that start-up costs
do not dominate. A benchmark without an entry in ``ARGS`` runs with its own defaults. The exit
status is non-zero if any benchmark failed, and the summary names it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

# Per benchmark (file stem): arguments for a run of a few minutes at most.
ARGS: dict[str, list[str]] = {
    "bench_anchor": ["--checkpoints", "2", "--proofs", "50"],
    "bench_merkle": ["--leaves", "200000", "--proofs", "2000", "--consistency", "200"],
    "bench_devices": ["--devices", "200", "--rate", "50", "--duration", "10"],
    # 500 devices x 5 Hz is near what one stream worker seals on a 2-core box: the last row shows
    # where the pipeline starts to fall behind.
    "bench_pipeline": ["--devices", "10,100,500", "--rate", "5", "--seconds", "20"],
    # one bridge vs two over device shards, draining the same backlog (docs/PERFORMANCE.md)
    "bench_bridges": ["--bridges", "1", "2", "--devices", "16", "--messages", "1000"],
    # the size: verified vs unverified read of 10,000 readings (docs/PERFORMANCE.md)
    "bench_reads": ["--readings", "10000", "--rounds", "3"],
}


def discover(filters: list[str]) -> list[Path]:
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if filters:
        scripts = [s for s in scripts if any(f in s.stem for f in filters)]
    return scripts


def run_one(script: Path) -> tuple[int, float]:
    args = ARGS.get(script.stem, [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    shown = " ".join([f"bench/{script.name}", *args])
    print(f"\n=== {shown}", flush=True)
    started = time.monotonic()
    code = subprocess.call([sys.executable, str(script), *args], cwd=REPO, env=env)
    return code, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="run only benchmarks whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and their arguments")
    args = parser.parse_args()
    scripts = discover(args.only)
    if not scripts:
        print(f"no benchmark in {BENCH_DIR} matches {args.only}", file=sys.stderr)
        return 2
    if args.list:
        for script in scripts:
            print(f"bench/{script.name} {' '.join(ARGS.get(script.stem, ['(its defaults)']))}")
        return 0
    results = []
    for script in scripts:
        try:
            results.append((script.name, *run_one(script)))
        except KeyboardInterrupt:
            results.append((script.name, 130, 0.0))
            break
    print("\n=== summary")
    for name, code, seconds in results:
        print(f"{name:<24} {'ok' if code == 0 else f'FAILED (exit {code})':<18} {seconds:7.1f} s")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
