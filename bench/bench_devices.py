"""Raw publish rate of the device simulator against Mosquitto alone.

Starts a private Mosquitto on a free loopback port (nothing else), provisions the devices, offers
``--devices x --rate`` readings per second for ``--duration`` seconds, and reports the readings per
second that Mosquitto acknowledged (PUBACK). The fleet and the broker share this machine's cores,
so the number is the simulator's ceiling here, not the broker's.

    .venv/bin/python bench/bench_devices.py --devices 100 --rate 200 --duration 10
    .venv/bin/python bench/bench_devices.py --devices 1000 --rate 20 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import load_settings
from vitalchain.devices.fleet import FleetStats, run_fleet
from vitalchain.devices.registry import provision_devices


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0, help="readings/s per device offered")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=10)
    args = parser.parse_args()

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

            def progress(stats: FleetStats) -> None:
                print(stats.line(), file=sys.stderr)

            stats = asyncio.run(run_fleet(
                settings, devices, args.rate, duration=args.duration, batch=args.batch,
                on_progress=progress, progress_interval=2.0, track_acked=False,
                max_inflight=args.inflight, buffer_limit=1_000_000))
        finally:
            stack.down()
    result = {"devices": args.devices, "offered_per_s": args.devices * args.rate,
              "batch": args.batch, "duration_s": args.duration,
              "provision_s": round(provision_s, 2), "elapsed_s": round(stats.elapsed_s, 2),
              "generated": stats.generated, "acked": stats.acked, "messages": stats.messages,
              "dropped": stats.dropped, "unacked": stats.buffered,
              "acked_per_s": round(stats.acked / stats.elapsed_s)}
    print(json.dumps(result))
    return 0 if stats.buffered == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
