"""Time to provision devices against a running private Mosquitto (and with it stopped).

Starts Mosquitto alone on a free loopback port, provisions ``--devices`` new devices in one call
(``provision_devices``: credentials, registry, and whatever makes the running broker accept them),
then ``--devices`` more on top of those, so the cost of a broker that already knows many users
shows; then stops Mosquitto and provisions one more batch with no broker running.

    .venv/bin/python bench/bench_provision.py --devices 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from vitalchain.devices.registry import provision_devices

from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import load_settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    args = parser.parse_args()
    result: dict[str, object] = {"devices": args.devices}
    with tempfile.TemporaryDirectory(prefix="bench-provision-") as folder:
        (mqtt_port,) = free_ports(1)
        settings = load_settings(environ={}, state_dir=Path(folder), mqtt_port=mqtt_port)
        stack = Stack(settings)
        try:
            stack.up(("mosquitto",))
            for label in ("running_first_s", "running_second_s"):
                started = time.monotonic()
                provision_devices(settings, args.devices, prefix=label.split("_")[1])
                result[label] = round(time.monotonic() - started, 2)
        finally:
            stack.down()
        started = time.monotonic()
        provision_devices(settings, args.devices, prefix="stopped")
        result["stopped_s"] = round(time.monotonic() - started, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
