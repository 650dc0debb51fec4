"""Floods: one device far above its rate is cut back by the per-device token bucket
(``vitalchain.ingest.ratelimit``), its excess dead-lettered ``rate_limited``, the other devices untouched."""

from __future__ import annotations

import base64
import json
import sys
import threading
import time

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
from vitalchain.ingest.ratelimit import DeviceRateLimiter

SECOND = 1_000_000


def test_bucket_grants_burst_then_rate_and_survives_clock_steps() -> None:
    limiter = DeviceRateLimiter(rate_per_second=10, burst=20)
    t = 1_700_000_000 * SECOND
    assert limiter.take("a", 15, t) == 15
    assert limiter.take("a", 15, t) == 5  # burst spent: the first five of the batch
    assert limiter.take("a", 1, t) == 0
    assert limiter.take("b", 20, t) == 20  # another device has a bucket of its own
    assert limiter.take("a", 100, t + SECOND) == 10  # one second refills `rate` tokens
    assert limiter.take("a", 100, t + 100 * SECOND) == 20  # never above the burst
    assert limiter.take("a", 1, t - 50 * SECOND) == 0  # a clock stepping back grants nothing
    assert limiter.take("a", 100, t + 101 * SECOND) == 10
    with pytest.raises(ValueError):
        DeviceRateLimiter(0, 10)
    with pytest.raises(ValueError):
        DeviceRateLimiter(10, 0)


def _ticker(devices: list[Device], ticks: int, sent: dict[str, list[int]],
            stop: threading.Event) -> None:
    """Each normal device publishes one reading a second."""
    for tick in range(ticks):
        if stop.is_set():
            return
        started = time.monotonic()
        for device in devices:
            device.publish(make_reading(device.device, tick))
            sent[device.device].append(tick)
        stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


@pytest.mark.e2e
def test_one_device_flooding_does_not_starve_the_others(isolated: Settings) -> None:
    settings = isolated.with_overrides(flood_rate_per_second=50.0, flood_burst=500)
    flood_total, batch_size, ticks = 3000, 100, 6
    flooder_id = unique_device("flood")
    names = [unique_device("calm") for _ in range(3)]
    flooder = Device(settings, flooder_id, provision_device(settings, flooder_id))
    calm = [Device(settings, n, provision_device(settings, n)) for n in names]
    raw, dlq = Records(settings, settings.raw_topic), Records(settings, settings.dlq_topic)
    sent: dict[str, list[int]] = {n: [] for n in names}
    stop = threading.Event()
    try:
        with running_bridge(settings) as bridge:
            ticker = threading.Thread(target=_ticker, args=(calm, ticks, sent, stop))
            ticker.start()
            # The calm devices are publishing before the flood starts.
            wait_until(lambda: all(sent[n] for n in names), 15, "first calm readings")
            start = time.monotonic()
            for seq in range(flood_total):
                flooder.publish(make_reading(flooder_id, seq))
            flooder.wait_acked(60)
            # Then one batch: the bucket is empty, so most of it is limited within the message.
            flooder.publish({"readings": [make_reading(flooder_id, flood_total + i)
                                          for i in range(batch_size)]})
            flooder.wait_acked(20)
            flood_seconds = time.monotonic() - start
            ticker.join(ticks + 10)
            assert not ticker.is_alive()
            for device in calm:
                device.wait_acked(20)
            messages = flood_total + 1 + 3 * ticks
            wait_until(lambda: bridge.counters.acked >= messages, 60,
                       f"bridge acked all {messages} messages ({bridge.counters})")

            counters = bridge.counters
            forwarded = counters.forwarded
            raw_items = raw.wait_for(forwarded, 30, "every forwarded reading")
            limited = counters.rate_limited_readings
            limited_records = counters.dead_lettered["rate_limited"]
            dead = dlq.wait_for(limited_records, 30, "rate_limited dead letters")
            elapsed = time.monotonic() - start

            # Every calm reading arrived, none of them was limited.
            by_device: dict[str, list[dict]] = {}
            for key, value in raw_items:
                by_device.setdefault(key.decode(), []).append(value)
            for name in names:
                assert sorted(r["seq"] for r in by_device.get(name, [])) == sent[name] \
                    == list(range(ticks)), name
            lag_ms = max((r["received_us"] - r["ts_us"]) / 1000
                         for n in names for r in by_device[n])

            # The flood: forwarded + rate_limited = everything sent, and each reading is in
            # exactly one place, the limited ones with their original bytes.
            flood_forwarded = {r["seq"] for r in by_device.get(flooder_id, [])}
            assert len(flood_forwarded) == len(by_device[flooder_id])
            assert {k for k, _ in dead} == {flooder_id.encode()}
            limited_seqs: list[int] = []
            for _, value in dead:
                assert value["reason"] == "rate_limited" and value["stage"] == "bridge"
                assert value["topic"] == f"vitals/{flooder_id}"
                body = json.loads(base64.b64decode(value["payload_b64"]))
                if "readings" in body:
                    assert "indexes [" in value["detail"]
                    indexes = json.loads(value["detail"].split("indexes ", 1)[1])
                    limited_seqs += [body["readings"][i]["seq"] for i in indexes]
                else:
                    limited_seqs.append(body["seq"])
            assert len(limited_seqs) == limited == len(set(limited_seqs))
            total = flood_total + batch_size
            assert flood_forwarded | set(limited_seqs) == set(range(total))
            assert len(flood_forwarded) + limited == total
            assert forwarded == len(flood_forwarded) + 3 * ticks

            # The rule itself: the burst, plus the rate over the time the flood took.
            assert 500 <= len(flood_forwarded) <= 500 + 50 * elapsed + 1
            assert limited >= total - 500 - 50 * elapsed - 1
            assert lag_ms < 10_000, f"calm devices starved: {lag_ms:.0f} ms behind"
        print(f"\nflood: {total} readings in {flood_seconds:.1f}s, forwarded "
              f"{len(flood_forwarded)}, rate_limited {limited} in {limited_records} DLQ records; "
              f"calm devices' worst receive lag {lag_ms:.0f} ms", file=sys.stderr)
    finally:
        stop.set()
        for device in [flooder, *calm]:
            device.close()
        raw.close()
        dlq.close()
