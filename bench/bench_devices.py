"""Raw publish rate and CPU cost of the device simulator against Mosquitto alone.

Starts a private Mosquitto on a free loopback port (nothing else), provisions the devices, offers
``--devices x --rate`` readings per second for ``--duration`` seconds, and reports the readings per
second that Mosquitto acknowledged (PUBACK) and the CPU of the simulator (this process, user +
system, from ``/proc/self/stat``, over ``run_fleet`` only: provisioning and key generation are not
counted) and of Mosquitto (from ``/proc/<pid>/stat``), in ms per 1,000 readings acknowledged. The
fleet and the broker share this machine's cores, so the rate is the simulator's ceiling here, not
the broker's.

    .venv/bin/python bench/bench_devices.py --devices 100 --rate 200 --duration 10
    .venv/bin/python bench/bench_devices.py --devices 5000 --rate 2 --duration 30 --batch 10

It only uses ``run_fleet`` and ``provision_devices`` as they were before the simulator's rework,
so another tree's code can be measured by the same harness (``bench/bench_devices_ab.py`` runs
this file with the base tree's interpreter).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import load_settings
from vitalchain.devices.fleet import FleetStats, raise_nofile_limit, run_fleet
from vitalchain.devices.registry import provision_devices

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self") -> float:
    """user + system seconds of one process (all its threads), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0, help="readings/s per device offered")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=10)
    parser.add_argument("--profile", type=Path, default=None,
                        help="write a cProfile of the fleet run (not of provisioning) here")
    args = parser.parse_args()

    # One socket per device here and one per device in Mosquitto, which inherits this process's
    # limits when the stack starts it: raise the soft limit first, for both.
    limit = raise_nofile_limit()
    if limit < args.devices + 100:
        parser.error(f"{args.devices} devices need more open files than the limit of {limit}")
    with tempfile.TemporaryDirectory(prefix="bench-devices-") as folder:
        (mqtt_port,) = free_ports(1)
        settings = load_settings(environ={}, state_dir=Path(folder), mqtt_port=mqtt_port)
        stack = Stack(settings)
        try:
            # Provisioned before Mosquitto starts: it reads every user at start, while adding
            # thousands to a running one costs time per user (docs/DECISIONS.md D12).
            started = time.monotonic()
            devices = provision_devices(settings, args.devices, prefix="bench")
            provision_s = time.monotonic() - started
            stack.up(("mosquitto",))
            broker = stack.pid("mosquitto")
            assert broker is not None

            all_connected: list[float] = []  # when every device first was connected (s)
            last_line = [0.0]

            def progress(stats: FleetStats) -> None:
                if not all_connected and stats.connected == args.devices:
                    all_connected.append(stats.elapsed_s)
                if stats.elapsed_s - last_line[0] >= 2.0 or not stats.connected:
                    last_line[0] = stats.elapsed_s
                    print(stats.line(), file=sys.stderr)

            fleet = run_fleet(
                settings, devices, args.rate, duration=args.duration, batch=args.batch,
                on_progress=progress, progress_interval=0.25, track_acked=False,
                max_inflight=args.inflight, buffer_limit=1_000_000)
            sim_before, broker_before = cpu_seconds(), cpu_seconds(broker)
            if args.profile is not None:
                import cProfile
                profiler = cProfile.Profile()
                stats = profiler.runcall(asyncio.run, fleet)
                profiler.dump_stats(args.profile)
            else:
                stats = asyncio.run(fleet)
            sim_cpu, broker_cpu = cpu_seconds() - sim_before, cpu_seconds(broker) - broker_before
        finally:
            stack.down()
    per_1k = 1000 / stats.acked if stats.acked else float("nan")
    result = {"devices": args.devices, "offered_per_s": args.devices * args.rate,
              "batch": args.batch, "duration_s": args.duration,
              "provision_s": round(provision_s, 2), "elapsed_s": round(stats.elapsed_s, 2),
              "generated": stats.generated, "acked": stats.acked, "messages": stats.messages,
              "dropped": stats.dropped, "unacked": stats.buffered,
              "connect_attempts": getattr(stats, "connect_attempts", None),
              "acked_per_s": round(stats.acked / stats.elapsed_s),
              "all_connected_s": round(all_connected[0], 2) if all_connected else None,
              "simulator_cpu_s": round(sim_cpu, 2), "mosquitto_cpu_s": round(broker_cpu, 2),
              "simulator_ms_per_1k": round(sim_cpu * per_1k * 1000, 1),
              "mosquitto_ms_per_1k": round(broker_cpu * per_1k * 1000, 1),
              "profiled": args.profile is not None}
    print(json.dumps(result))
    return 0 if stats.buffered == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
