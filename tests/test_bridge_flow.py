"""The bridge on the real Mosquitto and Kafka: good readings forwarded, bad ones dead-lettered."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections import Counter
from typing import Any

import pytest

from tests.bridge_support import (
    Device,
    Records,
    make_reading,
    provision_device,
    running_bridge,
    unique_device,
)
from tests.common_support import wait_until
from vitalchain.config import Settings
from vitalchain.core.payload.validation import MAX_BATCH


def _strip_received(value: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(value["received_us"], int)
    assert abs(value["received_us"] - time.time_ns() // 1000) < 120_000_000
    return {k: v for k, v in value.items() if k != "received_us"}


@pytest.mark.e2e
def test_good_readings_forwarded_bad_ones_dead_lettered(isolated: Settings) -> None:
    dev = unique_device()
    device = Device(isolated, dev, provision_device(isolated, dev))
    raw, dlq = Records(isolated, isolated.raw_topic), Records(isolated, isolated.dlq_topic)
    good = [make_reading(dev, 0), *[make_reading(dev, i) for i in (1, 2, 3)]]
    batch_mixed_quality = [make_reading(dev, 4), make_reading(dev, 5, hr=999),
                           make_reading(dev, 6)]
    future = make_reading(dev, 9)
    future["ts_us"] += 3600 * 10**6
    bad: list[tuple[bytes | dict[str, Any], str]] = [
        (b"{oops", "malformed_json"),
        (b"[1,2,3]", "not_an_object"),
        ({**make_reading(dev, 7), "extra": 1}, "schema"),
        (make_reading(dev, 8, spo2=20), "out_of_range"),
        (make_reading(unique_device(), 0), "device_mismatch"),
        (future, "future_timestamp"),
        (b" " * (isolated.max_payload_bytes + 1), "oversized"),
        ({"readings": [make_reading(dev, 10), make_reading("other", 1)]}, "batch_mixed_devices"),
        ({"readings": [make_reading(dev, 11)] * (MAX_BATCH + 1)}, "batch_too_large"),
        ({"readings": []}, "batch_empty"),
    ]
    # bad_topic cannot reach the bridge through Mosquitto: the ACL lets a device write only
    # vitals/<its id> (unit-tested in test_validation.py).
    try:
        with running_bridge(isolated) as bridge:
            device.publish(good[0])
            device.publish({"readings": good[1:]})
            device.publish({"readings": batch_mixed_quality})
            for payload, _ in bad:
                device.publish(payload)
            device.wait_acked(20)
            messages = 3 + len(bad)
            forwarded = [*good, batch_mixed_quality[0], batch_mixed_quality[2]]

            records = raw.wait_for(len(forwarded), 30, "raw readings")
            assert sorted((_strip_received(v) for _, v in records), key=lambda r: r["seq"]) \
                == forwarded
            assert {key for key, _ in records} == {dev.encode()}

            dead = dlq.wait_for(len(bad) + 1, 30, "dead letters")
            by_reason = {v["reason"]: (key, v) for key, v in dead}
            assert sorted(Counter(v["reason"] for _, v in dead).items()) == sorted(
                Counter([reason for _, reason in bad] + ["out_of_range"]).items())
            for payload, reason in bad:
                key, value = by_reason[reason]
                original = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                if reason == "out_of_range":
                    continue  # two of them; checked below
                assert base64.b64decode(value["payload_b64"]) == original, reason
                assert value["topic"] == f"vitals/{dev}" and value["stage"] == "bridge"
                assert key == dev.encode() and value["detail"]
            in_batch = [v for _, v in dead if v["reason"] == "out_of_range"
                        and v["detail"].startswith("readings[1]: vitals.hr=999")]
            assert len(in_batch) == 1
            assert "schema" in by_reason and "extra" in by_reason["schema"][1]["detail"]

            wait_until(lambda: bridge.counters.acked == messages, 20,
                       f"bridge acked all {messages} messages ({bridge.counters})")
            counters = bridge.counters
            assert counters.received == messages
            assert counters.forwarded == len(forwarded)
            assert counters.dead_lettered == Counter([r for _, r in bad] + ["out_of_range"])
            assert bridge.in_flight == 0
            # Still alive and working after all that.
            device.publish(make_reading(dev, 12))
            raw.wait_for(len(forwarded) + 1, 20, "one more reading")
    finally:
        device.close()
        raw.close()
        dlq.close()


@pytest.mark.e2e
def test_throughput_single_bridge(isolated: Settings) -> None:
    """Readings per second through one bridge (single-reading messages, then batches of 100)."""
    total = int(os.environ.get("VITALCHAIN_BENCH_READINGS", "4000"))
    # One device at full speed: lift the per-device flood rule, this measures the bridge itself.
    isolated = isolated.with_overrides(flood_rate_per_second=1e9, flood_burst=10**9)
    dev = unique_device("bench")
    device = Device(isolated, dev, provision_device(isolated, dev))
    try:
        with running_bridge(isolated) as bridge:
            start = time.perf_counter()
            for seq in range(total):
                device.publish(make_reading(dev, seq))
            wait_until(lambda: bridge.counters.acked >= total, 300,
                       f"{total} single-reading messages acked")
            single = total / (time.perf_counter() - start)
            start = time.perf_counter()
            batches = total // 100
            for b in range(batches):
                device.publish({"readings": [make_reading(dev, total + b * 100 + i)
                                             for i in range(100)]})
            wait_until(lambda: bridge.counters.acked >= total + batches, 300,
                       f"{batches} batches acked")
            batched = batches * 100 / (time.perf_counter() - start)
            assert bridge.counters.forwarded == total + batches * 100
        print(f"\nbridge throughput: {single:.0f} readings/s as single-reading messages, "
              f"{batched:.0f} readings/s in batches of 100 ({total} readings each)",
              file=sys.stderr)
    finally:
        device.close()
