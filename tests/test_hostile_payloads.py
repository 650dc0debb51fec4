"""Hostile input: generated payloads through the real Mosquitto, bridge and Kafka.

Hypothesis draws a batch of hostile payloads (random bytes, random JSON, near-valid readings with
one field broken, oversized payloads, deep nesting, unicode oddities); one authenticated device
publishes all of them interleaved with good readings, through one bridge. The bridge must not
crash or stall, every hostile payload must land in the dead-letter topic with a known reason and
its original bytes, nothing of it may reach the raw topic, and every good reading must arrive.
Generating first and publishing once keeps this to one bridge run rather than one per example.
"""

from __future__ import annotations

import base64
import json
import os
import random
import sys
import uuid
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

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
from vitalchain.core.payload.validation import REASONS

HOSTILE = int(os.environ.get("VITALCHAIN_HOSTILE_PAYLOADS", "200"))
VITALS = ("hr", "spo2", "rr", "temp_c", "sys", "dia")

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
random_json = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
odd_text = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20) | st.sampled_from([
    "\u202edev", "dev\u0000", "d\u0435v", "\ufeffdev", "dev\n", "", "ｄｅｖ", "🩺", "\u200b"])


def _broken(device: str, how: str, value: Any, pick: int) -> bytes:
    """A valid reading with exactly one thing wrong (so invalid by construction); ``pick``
    chooses which field, drawn by Hypothesis like everything else."""
    reading = make_reading(device, 10**9 + pick)
    vitals = reading["vitals"]
    if how == "drop_field":
        del reading[sorted(reading)[pick % len(reading)]]
    elif how == "drop_vital":
        del vitals[VITALS[pick % len(VITALS)]]
    elif how == "extra_field":
        reading[f"x{value!s:.10}"] = value
    elif how == "string_vital":
        vitals[VITALS[pick % len(VITALS)]] = str(value)
    elif how == "float_int":
        vitals["hr"] = 72.5
    elif how == "bool_int":
        vitals["spo2"] = True
    elif how == "out_of_range":
        vitals[("hr", "spo2", "rr", "sys")[pick % 4]] = 10**6
    elif how == "negative_seq":
        reading["seq"] = -1
    elif how == "odd_id":
        reading["patient_id"] = f"\u202e{value}"  # never matches the id pattern
    elif how == "wrong_device":
        reading["device_id"] = f"{device}x"
    elif how == "future":
        reading["ts_us"] += 10**12
    elif how == "dia_above_sys":
        vitals["dia"], vitals["sys"] = 130, 120
    elif how == "nested_vitals":
        vitals["hr"] = [[[[72]]]]
    text = json.dumps(reading)
    if how == "nan":
        text = text.replace('"temp_c": 36.6', '"temp_c": NaN')
    elif how == "duplicate_key":
        text = text.replace('"seq":', '"seq": 1, "seq":', 1)
    elif how == "huge_int":
        text = text.replace('"hr": 72', '"hr": 7' + "2" * 5000, 1)
    return text.encode()


BREAKS = ("drop_field", "drop_vital", "extra_field", "string_vital", "float_int", "bool_int",
          "out_of_range", "negative_seq", "odd_id", "wrong_device", "future", "dia_above_sys",
          "nested_vitals", "nan", "duplicate_key", "huge_int")


def hostile_payloads(device: str, limit: int) -> st.SearchStrategy[tuple[str, bytes]]:
    """(kind, payload) pairs, every one of them invalid."""
    junk_prefix = st.sampled_from([b"", b"\xff", b"\xef\xbb\xbf", b"\x00", b"\xc3\x28"])
    return st.one_of(
        st.tuples(st.just("random_bytes"), st.binary(max_size=256)),
        st.tuples(st.just("random_json"), random_json.map(
            lambda v: json.dumps(v).encode() if not isinstance(v, dict) or "readings" not in v
            else b"[]")),
        st.tuples(st.just("near_valid"), st.builds(lambda how, v, pick: _broken(device, how, v, pick),
                                                   st.sampled_from(BREAKS), json_leaf,
                                                   st.integers(0, 10**6))),
        st.tuples(st.just("huge"), st.builds(lambda n, b: (b * n)[:n],
                                             st.integers(limit + 1, 2 * limit),
                                             st.binary(min_size=1, max_size=3))),
        st.tuples(st.just("deep_nesting"), st.builds(
            lambda depth, kind: (b"[" * depth + b"]" * depth) if kind else
            (b'{"a":' * depth + b"1" + b"}" * depth), st.integers(500, 30000), st.booleans())),
        st.tuples(st.just("unicode"), st.builds(
            lambda t, prefix: prefix + json.dumps({**make_reading(device, 1), "device_id": t},
                                                  ensure_ascii=False).encode("utf-8",
                                                                                 "surrogatepass"),
            odd_text, junk_prefix)),
        st.tuples(st.just("batch"), st.builds(
            lambda n: json.dumps({"readings": [make_reading(f"{device}{i % 2}", i)
                                               for i in range(n)]}).encode(),
            st.integers(2, 5))),
    )


def generate(device: str, count: int, limit: int, run_seed: int) -> list[tuple[str, bytes]]:
    """``count`` payloads drawn by Hypothesis (one example each; no I/O while drawing)."""
    drawn: list[tuple[str, bytes]] = []

    @seed(run_seed)
    @settings(max_examples=count, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(hostile_payloads(device, limit))
    def draw(pair: tuple[str, bytes]) -> None:
        drawn.append(pair)

    draw()
    return drawn[:count]


@pytest.mark.e2e
def test_bridge_survives_generated_hostile_payloads(isolated: Settings) -> None:
    run_seed = int(os.environ.get("VITALCHAIN_HOSTILE_SEED", random.randrange(2**32)))
    cfg = isolated.with_overrides(flood_burst=100_000)  # this test is about content, not rate
    dev = unique_device("hostile")
    hostile = generate(dev, HOSTILE, cfg.max_payload_bytes, run_seed)
    assert len(hostile) >= HOSTILE * 0.9, len(hostile)
    kinds = Counter(kind for kind, _ in hostile)
    assert len(kinds) >= 6, kinds
    device = Device(cfg, dev, provision_device(cfg, dev))
    raw, dlq = Records(cfg, cfg.raw_topic), Records(cfg, cfg.dlq_topic)
    where = f"(seed {run_seed}: rerun with VITALCHAIN_HOSTILE_SEED={run_seed})"
    try:
        with running_bridge(cfg) as bridge:
            good_seqs = []
            for index, (_, payload) in enumerate(hostile):
                device.publish(make_reading(dev, index))
                good_seqs.append(index)
                device.publish(payload)
            device.publish(make_reading(dev, len(hostile)))
            good_seqs.append(len(hostile))
            device.wait_acked(60)
            messages = 2 * len(hostile) + 1
            wait_until(lambda: bridge.counters.acked == messages, 120,
                       f"bridge acked all {messages} messages ({bridge.counters}) {where}")
            assert bridge.in_flight == 0

            records = raw.wait_for(len(good_seqs), 30, f"good readings {where}")
            forwarded = sorted(v["seq"] for _, v in records)
            assert forwarded == good_seqs, f"raw topic holds something unexpected {where}"
            assert bridge.counters.forwarded == len(good_seqs)

            dead = dlq.wait_for(sum(bridge.counters.dead_lettered.values()), 30, "dead letters")
            by_payload: dict[bytes, list[dict[str, Any]]] = {}
            for key, value in dead:
                assert value["reason"] in REASONS and value["reason"] != "rate_limited", value
                assert value["detail"] and value["stage"] == "bridge"
                assert value["topic"] == f"vitals/{dev}" and key == dev.encode()
                by_payload.setdefault(base64.b64decode(value["payload_b64"]), []).append(value)
            missing = [(kind, payload[:80]) for kind, payload in hostile
                       if payload not in by_payload]
            assert missing == [], f"hostile payloads without a dead letter {where}: {missing[:5]}"
            reasons = Counter(v["reason"] for vs in by_payload.values() for v in vs)
        print(f"\nhostile: {len(hostile)} payloads {dict(kinds)} -> dead letters {dict(reasons)}; "
              f"{len(good_seqs)} good readings all forwarded {where}", file=sys.stderr)
    finally:
        device.close()
        raw.close()
        dlq.close()


@pytest.mark.e2e
def test_payload_above_the_broker_limit_never_reaches_the_bridge(isolated: Settings) -> None:
    """Above Mosquitto's message_size_limit (4x max_payload_bytes) the broker drops it; the bridge
    sees nothing of it and keeps forwarding the device's next readings."""
    dev = unique_device("giant")
    password = provision_device(isolated, dev)
    raw, dlq = Records(isolated, isolated.raw_topic), Records(isolated, isolated.dlq_topic)
    giant = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{dev}-{uuid.uuid4().hex[:4]}",
                        protocol=mqtt.MQTTv5)
    giant.username_pw_set(dev, password)
    giant.connect(isolated.host, isolated.mqtt_port)
    giant.loop_start()
    try:
        with running_bridge(isolated) as bridge:
            info = giant.publish(f"vitals/{dev}", b"x" * (isolated.max_payload_bytes * 4 + 1024),
                                 qos=0)
            info.wait_for_publish(10)
            device = Device(isolated, dev, password)
            try:
                device.publish(make_reading(dev, 1))
                device.wait_acked(20)
                records = raw.wait_for(1, 20, "the reading after the giant payload")
            finally:
                device.close()
            assert [v["seq"] for _, v in records] == [1]
            assert bridge.counters.received == 1
            assert dlq.poll() == []
    finally:
        giant.loop_stop()
        giant.disconnect()
        raw.close()
        dlq.close()


def test_deep_nesting_is_refused_whatever_the_recursion_limit() -> None:
    """json's C parser bounds nesting by the interpreter's recursion limit; the validator bounds
    it itself, so a raised limit (test frameworks do raise it) changes nothing."""
    from vitalchain.core.payload.validation import validate

    before = sys.getrecursionlimit()
    sys.setrecursionlimit(200_000)
    try:
        for payload in (b"[" * 30000 + b"]" * 30000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
                        b"[ " * 33 + b"] " * 33):
            outcome = validate("vitals/dev-1", payload, 1_767_225_600_000_000,
                               max_payload_bytes=65536, max_future_seconds=300)
            assert [(r.reason, r.detail) for r in outcome.rejections] == [
                ("malformed_json", "nesting deeper than 32")], payload[:20]
    finally:
        sys.setrecursionlimit(before)
