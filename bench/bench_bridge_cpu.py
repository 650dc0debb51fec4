"""CPU of the MQTT→Kafka bridge process per 1,000 readings at a fixed load.

Starts a private Mosquitto and tansu on free loopback ports, runs ``vitalchain bridge run`` as its
own process, and offers ``--devices x --rate`` readings per second in batches of ``--batch`` for
``--duration`` seconds from the device simulator (another process's worth of CPU in this one).
The bridge's CPU is read from ``/proc/<pid>/stat`` (utime + stime) when the fleet starts and when
the bridge has forwarded every reading the broker acknowledged, so start-up is not counted. Also
reports which CRC32C implementation kafka-python uses in the bridge's interpreter (the ``crc32c``
package's C code, or kafka-python's pure-Python fallback).

    .venv/bin/python bench/bench_bridge_cpu.py --devices 100 --rate 20 --batch 5 --duration 20

``--compare TREE`` (repeatable; ``--rounds N``): the same run, in turn, by this tree and by each
other worktree (its own ``.venv/bin/python`` running its own ``bench/bench_bridge_cpu.py`` with the
same options), round by round interleaved (A B A B ...) so both are measured on the same noisy,
shared machine; prints each run's JSON and the median bridge CPU per 1,000 readings per tree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare_trees import tree_summary  # same folder: run as a script

from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.app.stack.topology import ensure_topics
from vitalchain.config import Settings, load_settings
from vitalchain.devices.fleet import run_fleet
from vitalchain.devices.registry import provision_devices

_LAUNCH = "import sys; from vitalchain.app.cli import main; sys.argv[0] = 'vitalchain'; main()"
_CRC = ("import kafka.record.util as u; "
        "print('crc32c (C)' if u.crc32c_c is not None else 'kafka-python pure Python')")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _forwarded(log: Path) -> int:
    found = re.findall(r"forwarded=(\d+)", log.read_text())
    return int(found[-1]) if found else -1


def _per_record(log: Path) -> float | None:
    """Messages per raw-topic record (bundles), from the bridge's last progress line; None for
    a bridge that does not count them (one record per message)."""
    text = log.read_text()
    records, messages = re.findall(r"raw_records=(\d+)", text), re.findall(r"raw_messages=(\d+)", text)
    if not records or int(records[-1]) == 0:
        return None
    return round(int(messages[-1]) / int(records[-1]), 2)


def _bridge_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCHAIN_")}
    env.update(VITALCHAIN_STATE_DIR=str(settings.state_dir),
               VITALCHAIN_MQTT_PORT=str(settings.mqtt_port),
               VITALCHAIN_KAFKA_PORT=str(settings.kafka_port))
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="readings/s per device offered")
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="another worktree with its own .venv, run interleaved")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per tree with --compare")
    args = parser.parse_args()
    if args.compare:
        return compare(args)

    crc = subprocess.run([sys.executable, "-c", _CRC], capture_output=True, text=True,
                         check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as folder:
        mqtt_port, kafka_port = free_ports(2)
        settings = load_settings(environ={}, state_dir=Path(folder), mqtt_port=mqtt_port,
                                 kafka_port=kafka_port)
        stack = Stack(settings)
        bridge: subprocess.Popen[bytes] | None = None
        log = Path(folder) / "bridge.log"
        try:
            stack.up(("mosquitto", "kafka"))
            ensure_topics(settings)
            devices = provision_devices(settings, args.devices, prefix="bench")
            with open(log, "wb") as out:
                bridge = subprocess.Popen(
                    [sys.executable, "-c", _LAUNCH, "bridge", "run", "--progress-every", "0.5"],
                    env=_bridge_env(settings), stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            while _forwarded(log) < 0:
                if time.monotonic() > deadline or bridge.poll() is not None:
                    raise RuntimeError(f"bridge did not start; log:\n{log.read_text()}")
                time.sleep(0.2)
            cpu_before = _cpu_seconds(bridge.pid)
            started = time.monotonic()
            stats = asyncio.run(run_fleet(
                settings, devices, args.rate, duration=args.duration, batch=args.batch,
                track_acked=False, max_inflight=20, buffer_limit=1_000_000))
            deadline = time.monotonic() + 120
            while _forwarded(log) < stats.acked:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bridge forwarded {_forwarded(log)} of {stats.acked}")
                time.sleep(0.2)
            cpu = _cpu_seconds(bridge.pid) - cpu_before
            elapsed = time.monotonic() - started
            time.sleep(1.0)  # one more progress line, with the last acks counted
            per_record = _per_record(log)
        finally:
            if bridge is not None and bridge.poll() is None:
                bridge.terminate()
                bridge.wait(30)
            stack.down()
    result = {"crc32c": crc, "devices": args.devices, "offered_readings_per_s":
              args.devices * args.rate, "batch": args.batch, "readings": stats.acked,
              "messages": stats.messages, "elapsed_s": round(elapsed, 1),
              "bridge_cpu_s": round(cpu, 2),
              "bridge_cpu_ms_per_1000_readings": round(1000 * cpu / stats.acked * 1000, 1),
              "bridge_cpu_share_of_one_core": round(cpu / elapsed, 3),
              "messages_per_raw_record": per_record}
    print(json.dumps(result))
    return 0


def compare(args: argparse.Namespace) -> int:
    """Run this bench in each tree in turn, ``--rounds`` times (A B A B ...)."""
    trees = [Path(__file__).resolve().parents[1], *[t.resolve() for t in args.compare]]
    options = ["--devices", str(args.devices), "--rate", str(args.rate), "--batch",
               str(args.batch), "--duration", str(args.duration)]
    figures: dict[Path, list[float]] = {t: [] for t in trees}
    for _ in range(args.rounds):
        for tree in trees:
            out = subprocess.run([str(tree / ".venv/bin/python"),
                                  str(tree / "bench/bench_bridge_cpu.py"), *options],
                                 cwd=tree, capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            print(json.dumps({"tree": str(tree), **result}), flush=True)
            figures[tree].append(result["bridge_cpu_ms_per_1000_readings"])
    print(f"{args.devices} devices x {args.rate} Hz in messages of {args.batch}, {args.duration} s, "
          f"{args.rounds} interleaved rounds; bridge CPU ms per 1,000 readings")
    for tree, values in figures.items():
        print(tree_summary(tree, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
