"""A backlog queued for a stopped bridge, then drained: time, most held at once, lost, duplicated.

The overload case of docs/DECISIONS.md D18 at any size (the issue's: ``--devices 8 --messages
15000 --batch 5``, 120,000 messages): starts a private Mosquitto and tansu on free loopback ports,
subscribes the bridge's persistent session and stops the bridge, has ``--devices`` devices publish
``--messages`` QoS 1 messages of ``--batch`` readings each (Mosquitto PUBACKs them and queues them
for the bridge), starts the bridge again in this process and waits until it has acked them all or
made no progress for 30 s. Then it reads the raw topic and counts every acknowledged reading that
is missing or there more than once. ``tests/test_bridge_overload.py`` runs a smaller case in
``make test``.

    .venv/bin/python bench/bench_bridge_backlog.py --devices 8 --messages 15000 --batch 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
from kafka import KafkaConsumer, TopicPartition

from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import Settings, load_settings
from vitalchain.core.payload.record import record_readings
from vitalchain.devices.registry import DeviceIdentity, provision_devices
from vitalchain.ingest.bridge import Bridge


def _bridge(settings: Settings) -> tuple[Bridge, threading.Thread]:
    bridge = Bridge(settings, instance=0, group=None)
    thread = threading.Thread(target=bridge.run, name="bridge", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not bridge.subscribed.is_set():
        if time.monotonic() > deadline:
            raise RuntimeError("bridge did not subscribe within 30s")
        time.sleep(0.1)
    return bridge, thread


def _publish(settings: Settings, device: DeviceIdentity, messages: int, batch: int) -> None:
    """Publish QoS 1 messages of ``batch`` readings (seq 0, 1, ...) and wait for every PUBACK."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device.device_id,
                         clean_session=False)
    client.username_pw_set(device.username, device.password)
    client.max_inflight_messages_set(100)
    client.connect(settings.host, settings.mqtt_port, keepalive=30)
    client.loop_start()
    infos = []
    now_us = time.time_ns() // 1000
    for m in range(messages):
        readings = [{"device_id": device.device_id, "patient_id": device.patient_id,
                     "seq": m * batch + i, "ts_us": now_us - 1000 + m,
                     "vitals": {"hr": 72, "spo2": 98, "rr": 14, "temp_c": 36.6, "sys": 120,
                                "dia": 80}} for i in range(batch)]
        infos.append(client.publish(device.topic, json.dumps({"readings": readings}), qos=1))
    deadline = time.monotonic() + 300
    while not all(info.is_published() for info in infos):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{device.device_id}: broker did not PUBACK everything in 300s")
        time.sleep(0.2)
    client.disconnect()
    client.loop_stop()


def _raw_readings(settings: Settings) -> Counter[tuple[str, int]]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             group_id=None)
    try:
        topic = settings.raw_topic
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        seen: Counter[tuple[str, int]] = Counter()
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=500, max_records=20_000).values():
                seen.update((item["device_id"], item["seq"]) for r in batch
                            for item in record_readings(r.value))
        return seen
    finally:
        consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--messages", type=int, default=9000, help="messages per device")
    parser.add_argument("--batch", type=int, default=2, help="readings per message")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as folder:
        mqtt_port, kafka_port = free_ports(2)
        # Few devices at full speed: lift the flood rule, this measures the bridge's bookkeeping.
        settings = load_settings(environ={}, state_dir=Path(folder), mqtt_port=mqtt_port,
                                 kafka_port=kafka_port, flood_rate_per_second=1e9,
                                 flood_burst=10**9)
        stack = Stack(settings)
        try:
            stack.up(("mosquitto", "kafka"))
            devices = provision_devices(settings, args.devices, prefix="backlog")
            bridge, thread = _bridge(settings)
            bridge.stop()  # the persistent session and its subscription stay in Mosquitto
            thread.join(60)
            started = time.monotonic()
            publishers = [threading.Thread(target=_publish, args=(settings, d, args.messages,
                                                                  args.batch)) for d in devices]
            for t in publishers:
                t.start()
            for t in publishers:
                t.join()
            queued_s = time.monotonic() - started
            messages = args.devices * args.messages

            started = time.monotonic()
            bridge, thread = _bridge(settings)
            most, last, since = 0, -1, time.monotonic()
            while bridge.counters.acked < messages and time.monotonic() - since < 30:
                most = max(most, bridge.held)
                if bridge.counters.acked != last:
                    last, since = bridge.counters.acked, time.monotonic()
                time.sleep(0.1)
            drained_s = time.monotonic() - started
            line = bridge.progress_line()
            bridge.stop()
            thread.join(60)
            seen = _raw_readings(settings)
        finally:
            stack.down()
    expected = {(d.device_id, s) for d in devices for s in range(args.messages * args.batch)}
    result = {"messages": messages, "readings": len(expected), "queued_s": round(queued_s, 1),
              "drained_s": round(drained_s, 1), "stalled": bridge.counters.acked < messages,
              "most_held": most, "missing_readings": len(expected - set(seen)),
              "duplicated_readings": sum(1 for k, n in seen.items() if k in expected and n > 1),
              "bridge": line}
    print(json.dumps(result))
    return 0 if result["missing_readings"] == 0 and not result["stalled"] else 1


if __name__ == "__main__":
    sys.exit(main())
