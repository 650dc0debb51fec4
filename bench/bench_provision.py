"""Time to provision devices against a running private Mosquitto (and with it stopped).

Starts Mosquitto alone on a free loopback port, provisions ``--devices`` new devices in one call
(``provision_devices``: credentials, registry, and whatever makes the running broker accept them)
while one device publishes QoS 1 messages back to back (the longest wait for a PUBACK shows how
long the broker stopped serving clients), then ``--devices`` more on top of those, so the cost of
a broker that already knows many users shows; then stops Mosquitto and provisions one more batch
with no broker running (the broker reads them when it starts, timed too).

    .venv/bin/python bench/bench_provision.py --devices 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import Settings, load_settings
from vitalchain.devices.registry import DeviceIdentity, provision_devices


class Publisher(threading.Thread):
    """One device publishing QoS 1 back to back; records the slowest PUBACK."""

    def __init__(self, settings: Settings, device: DeviceIdentity) -> None:
        super().__init__(daemon=True)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device.device_id)
        self.client.username_pw_set(device.username, device.password)
        self.client.connect(settings.host, settings.mqtt_port)
        self.client.loop_start()
        self.topic = device.topic
        self.stop = threading.Event()
        self.worst_s = 0.0
        self.acked = 0

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            info = self.client.publish(self.topic, b"{}", qos=1)
            info.wait_for_publish(120)
            if info.is_published():
                self.acked += 1
                self.worst_s = max(self.worst_s, time.monotonic() - started)

    def finish(self) -> None:
        self.stop.set()
        self.join(130)
        self.client.loop_stop()
        self.client.disconnect()


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
            publisher = Publisher(settings, provision_devices(settings, 1, prefix="pub")[0])
            publisher.start()
            try:
                started = time.monotonic()
                provision_devices(settings, args.devices, prefix="first")
                result["running_first_s"] = round(time.monotonic() - started, 2)
            finally:
                publisher.finish()
            result["worst_puback_during_first_s"] = round(publisher.worst_s, 3)
            result["pubacks_during_first"] = publisher.acked
            started = time.monotonic()
            provision_devices(settings, args.devices, prefix="second")
            result["running_second_s"] = round(time.monotonic() - started, 2)
        finally:
            stack.down()
        started = time.monotonic()
        provision_devices(settings, args.devices, prefix="stopped")
        result["stopped_s"] = round(time.monotonic() - started, 2)
        # What the stopped broker's start costs with every user (configuration written, healthy).
        try:
            started = time.monotonic()
            stack.up(("mosquitto",))
            result["start_with_all_users_s"] = round(time.monotonic() - started, 2)
        finally:
            stack.down()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
