"""Overload: a backlog of more messages than MQTT has packet ids reaches Kafka, none stranded.

The bridge's persistent session is subscribed, the bridge stops, devices publish more than 65,535
messages (Mosquitto queues them for the bridge and PUBACKs each device), then the bridge starts
again. Mosquitto numbers a message for the bridge when it queues it, so the backlog holds every
packet id more than once, and Mosquitto 2.0.11 sends far more than the bridge's Receive Maximum
once acks flow (docs/DECISIONS.md D18): unless the bridge holds back, it sees a new message under a
packet id it is still producing.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.bridge_support import Device, bridge_thread, make_reading, provision_devices, unique_device
from tests.common_support import wait_until
from vitalchain.config import Settings
from vitalchain.core.payload.record import record_readings
from vitalchain.ingest.bridge import Bridge, forget_session
from vitalchain.ingest.bridge_provision import provision_bridge

DEVICES = 8
MESSAGES_PER_DEVICE = 9_000  # 72,000 messages: beyond the 65,535 packet ids of one MQTT session


@contextlib.contextmanager
def _bridge(settings: Settings, instance: int, max_inflight: int = 1000) -> Iterator[Bridge]:
    """A bridge in a thread on the plain subscription, keeping its session when it stops."""
    with bridge_thread(Bridge(settings, instance=instance, group=None, max_inflight=max_inflight),
                       stop_timeout=60) as bridge:
        yield bridge


def _queue_backlog(settings: Settings, instance: int, per_message: int) -> list[str]:
    """Subscribe the bridge's session, stop the bridge, publish the backlog; return the devices."""
    names = [unique_device("ovl") for _ in range(DEVICES)]
    passwords = provision_devices(settings, names)
    devices = [Device(settings, name, passwords[name]) for name in names]
    try:
        with _bridge(settings, instance):
            pass  # the persistent session and its subscription now exist; the bridge is gone

        def publish(device: Device) -> None:
            for m in range(MESSAGES_PER_DEVICE):
                device.publish({"readings": [make_reading(device.device, m * per_message + i)
                                             for i in range(per_message)]})

        publishers = [threading.Thread(target=publish, args=(d,)) for d in devices]
        for t in publishers:
            t.start()
        for t in publishers:
            t.join(300)
        for device in devices:
            device.wait_acked(120)  # every message is the broker's now, queued for the bridge
    finally:
        for device in devices:
            device.close()
    return names


def _all_records(settings: Settings, topic: str) -> list[tuple[bytes, bytes]]:
    """Every record on the topic up to its end offsets at the time of the call."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        records: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 120
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, "reading the raw topic took over 120s"
            for batch in consumer.poll(timeout_ms=500, max_records=20_000).values():
                records += [(r.key, r.value) for r in batch]
        return records
    finally:
        consumer.close()


def _readings(records: list[tuple[bytes, bytes]]) -> Counter[tuple[str, int]]:
    return Counter((item["device_id"], int(item["seq"])) for _key, value in records
                   for item in record_readings(value))


def _wait_while_progressing(done: Callable[[], bool], progress: Callable[[], object],
                            stall: float, what: str) -> None:
    """Wait until ``done()``; fail once ``progress()`` has not changed for ``stall`` seconds."""
    last, since = progress(), time.monotonic()
    while not done():
        time.sleep(0.2)
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall:
            raise AssertionError(f"no progress for {stall:.0f}s waiting for {what}")


@pytest.mark.e2e
def test_backlog_beyond_the_packet_id_space_arrives_exactly_once(isolated: Settings) -> None:
    # Eight devices at full speed: lift the flood rule, this is about the bridge's bookkeeping.
    settings = isolated.with_overrides(flood_rate_per_second=1e9, flood_burst=10**9)
    instance = random.randint(1000, 9999)
    provision_bridge(settings, instance)
    per_message = 2
    messages, readings = DEVICES * MESSAGES_PER_DEVICE, DEVICES * MESSAGES_PER_DEVICE * per_message
    try:
        started = time.monotonic()
        names = _queue_backlog(settings, instance, per_message)
        queued_s = time.monotonic() - started
        started = time.monotonic()
        with _bridge(settings, instance) as bridge:
            most = [0]

            def progress() -> int:
                most[0] = max(most[0], bridge.held)
                return bridge.counters.acked

            _wait_while_progressing(lambda: bridge.counters.acked >= messages, progress, 30,
                                    f"{messages} messages acked ({bridge.counters})")
            wait_until(lambda: bridge.in_flight == 0, 20, "nothing left in flight")
            drained_s = time.monotonic() - started
            counters = bridge.counters
            line = bridge.progress_line()
        print(f"\noverload: {messages} messages ({readings} readings) queued in {queued_s:.1f}s, "
              f"drained in {drained_s:.1f}s; most held at once: {most[0]}; {line}", file=sys.stderr)
        # Every counter that can hold a reading back is on the progress line.
        for name in ("in_flight", "waiting_for_order", "retrying", "redelivered_in_flight",
                     "same_id_in_flight", "stale", "over_receive_maximum"):
            assert f" {name}=" in f" {line}", f"{name} missing from the progress line: {line}"

        seen = _readings(_all_records(settings, settings.raw_topic))
        expected = {(name, seq) for name in names for seq in range(MESSAGES_PER_DEVICE
                                                                    * per_message)}
        missing = expected - set(seen)
        duplicated = [k for k, n in seen.items() if n > 1]
        assert not missing, f"{len(missing)} readings missing, e.g. {sorted(missing)[:5]}; {line}"
        assert not duplicated, f"{len(duplicated)} readings duplicated, e.g. {duplicated[:5]}"
        assert set(seen) == expected
        assert counters.acked == messages and counters.forwarded == readings
        # Mosquitto 2.0.11 sends more than the Receive Maximum (D18: over_receive_maximum on the
        # printed line); whatever the broker sends, the bridge holds no more than its limit.
        assert most[0] <= 1000 + 1, f"bridge held {most[0]} messages at once (limit 1000)"
    finally:
        with contextlib.suppress(OSError, TimeoutError):
            forget_session(settings, instance)
