"""Raw-topic records of version 2 (one per MQTT message) and of version 1 (one per reading, from
before the upgrade): the format, and the windows the stream cuts from them (pure, no services)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_windowing import KEY, SECOND, T0, feed, reading, record, windower
from vitalchain.core.integrity import canonical_reading, reading_leaf_hash
from vitalchain.core.payload.record import (
    RecordError,
    decode,
    encode,
    encode_v1,
    record_readings,
)
from vitalchain.ingest.bridge import _raw_value


def batch(device: str, first_seq: int, n: int, ts: int, step: int = 200_000,
          received_us: int = 1, signed: dict | None = None) -> bytes:
    return encode([reading(device, first_seq + i, ts + i * step) for i in range(n)],
                  received_us, signed)


def signed_part(readings: list[dict]) -> dict:
    return {"at": [readings[0]["ts_us"], readings[0]["seq"]], "key_id": "k1", "sig": "c2ln",
            "readings": readings}


# --- the format ---------------------------------------------------------------------------

def test_version_2_round_trips_and_version_1_is_still_read() -> None:
    readings = [reading("d1", i, T0 + i) for i in range(3)]
    value = encode(readings, 42)
    assert json.loads(value)["v"] == 2
    decoded = decode(value)
    assert (decoded.version, decoded.received_us, decoded.readings, decoded.signed) == (
        2, 42, readings, None)
    old = decode(encode_v1(readings[0], 42))
    assert (old.version, old.received_us, old.readings, old.signed) == (1, 42, [readings[0]],
                                                                        None)
    # A reader thinking in readings sees the same thing in both versions.
    assert record_readings(value) == [record_readings(encode_v1(r, 42))[0] for r in readings]
    # The bridge's one-reading value is a version-2 record too.
    assert decode(_raw_value(readings[0], 42)).version == 2


def test_signed_part_is_carried_once_and_named_per_reading() -> None:
    readings = [reading("d1", i, T0 + i) for i in range(3)]
    part = signed_part(readings)
    decoded = decode(encode(readings, 1, part))
    assert decoded.signed == part
    assert decoded.signed_part(0, True) == part
    assert decoded.signed_part(2, False) == {"at": part["at"]}
    # As the version-1 records of the same message said it: whole on the first, "at" after.
    assert [r["signed"] for r in record_readings(encode(readings, 1, part))] == [
        part, {"at": part["at"]}, {"at": part["at"]}]


def test_a_signed_message_whose_readings_are_all_forwarded_carries_them_once() -> None:
    readings = [reading("d1", i, T0 + i) for i in range(3)]
    part = signed_part(readings)
    value = encode(readings, 1, part)
    raw = json.loads(value)
    assert raw["signed"] == {"at": part["at"], "key_id": "k1", "sig": "c2ln"}  # once
    assert value.count(b'"device_id"') == 3
    decoded = decode(value)
    assert decoded.signed == part and decoded.signed["readings"] == readings
    assert list(decoded.signed) == ["at", "key_id", "sig", "readings"]
    # An older bridge's record with both copies reads the same.
    both = json.dumps({"v": 2, "received_us": 1, "readings": readings, "signed": part},
                      separators=(",", ":")).encode()
    assert decode(both) == decoded
    # Equal by == is not enough: 80.0 is not the 80 the device signed.
    sent = [dict(r) for r in readings]
    sent[1] = {**sent[1], "vitals": {**sent[1]["vitals"], "dia": 80.0}}
    full = json.loads(encode(readings, 1, {**part, "readings": sent}))["signed"]
    assert full["readings"][1]["vitals"]["dia"] == 80.0 and type(
        full["readings"][1]["vitals"]["dia"]) is float
    # A message with a reading not forwarded (rejected) keeps its readings as sent.
    sent = [*readings, {"device_id": "d1", "seq": -1}]
    decoded = decode(encode(readings, 1, {**part, "readings": sent}))
    assert decoded.signed["readings"] == sent and decoded.readings == readings


@pytest.mark.parametrize("signed", [
    {"at": [T0, 1], "key_id": 1, "sig": "c2ln"},
    {"at": [T0, 1], "key_id": "k1", "sig": None},
    {"at": "x", "key_id": "k1", "sig": "c2ln"},
    {"at": [T0, 1], "key_id": "k1"},
])
def test_malformed_signed_parts_carried_once_are_refused(signed: dict) -> None:
    value = json.dumps({"v": 2, "received_us": 1, "readings": [reading("d1", 1, T0)],
                        "signed": signed}).encode()
    with pytest.raises(RecordError):
        decode(value)


def test_version_1_has_no_signed_part_carried_once() -> None:
    value = encode_v1(reading("d1", 1, T0), 1, {"at": [T0, 1], "key_id": "k1", "sig": "c2ln"})
    with pytest.raises(RecordError):
        decode(value)


@pytest.mark.parametrize("value", [
    json.dumps({"v": 3, "received_us": 1, "readings": [reading("d1", 1, T0)]}).encode(),
    json.dumps({"v": 2.0, "received_us": 1, "readings": [reading("d1", 1, T0)]}).encode(),
    json.dumps({"v": 2, "received_us": 1, "readings": []}).encode(),
    json.dumps({"v": 2, "received_us": 1, "readings": {}}).encode(),
    json.dumps({"v": 2, "readings": [reading("d1", 1, T0)]}).encode(),
    json.dumps({"v": 2, "received_us": 1, "readings": [reading("d1", 1, T0)], "x": 1}).encode(),
    json.dumps({"v": 2, "received_us": 1, "readings": [reading("d1", 1, T0)],
                "signed": {"at": [T0, 1]}}).encode(),
    json.dumps({"v": 2, "received_us": 1, "readings": [reading("d1", i, T0) for i in range(101)]}
               ).encode(),
    b'{"v":2,"v":2,"received_us":1,"readings":[]}',
])
def test_malformed_version_2_records_are_refused(value: bytes) -> None:
    with pytest.raises(RecordError):
        decode(value)
    w = windower()
    result = w.offer(0, value)
    assert result.outcome == "invalid" and result.invalid == 1
    closed = w.cut_idle()
    assert closed is not None and closed.header is None
    assert json.loads(closed.dead_letters[0].value)["reason"] == "invalid_record"


# --- windows from batches -----------------------------------------------------------------

def test_same_readings_same_leaves_whether_batched_or_not() -> None:
    """Leaves and roots depend on the readings, not on how Kafka carried them."""
    readings = [reading(f"d{d}", s, T0 + s * 200_000 + d) for s in range(5) for d in range(2)]
    one = windower()
    feed(one, [record(r) for r in readings])
    batched = windower()
    values = [encode([r for r in readings if r["device_id"] == f"d{d}"], 1) for d in range(2)]
    feed(batched, values)
    a, b = one.cut_idle(), batched.cut_idle()
    assert a is not None and b is not None
    assert sorted(a.leaf_hashes) == sorted(b.leaf_hashes)
    assert (b.first_offset, b.last_offset, b.header["size"]) == (0, 1, 10)
    expected = {(r["device_id"], r["seq"]): reading_leaf_hash(canonical_reading(r, KEY))
                for r in readings}
    assert {(r.canonical["device_id"], r.canonical["seq"]): r.leaf for r in b.readings} == expected


def test_a_record_is_never_split_across_windows() -> None:
    w = windower()  # 2 s windows
    # Each batch spans 1.8 s; the second starts 1.9 s after the first: same window.
    values = [batch("d1", 0, 10, T0), batch("d1", 10, 10, T0 + 1_900_000),
              batch("d1", 20, 10, T0 + 4 * SECOND), batch("d1", 30, 10, T0 + 5 * SECOND)]
    closed = feed(w, values)
    assert [(c.first_offset, c.last_offset, c.header["size"]) for c in closed] == [(0, 1, 20)]
    assert closed[0].header["end_us"] == T0 + 1_900_000 + 9 * 200_000  # past 2 s: kept whole
    tail = w.cut_idle()
    assert tail is not None and (tail.first_offset, tail.last_offset) == (2, 3)
    assert [r.offset for r in tail.readings] == [2] * 10 + [3] * 10
    # Replay from the sealed offset reproduces the later window exactly.
    again = windower(sealed_offset=1, prev_end_us=closed[0].header["end_us"])
    feed(again, values[2:], start=2)
    replayed = again.cut_idle()
    assert replayed is not None and replayed.header == tail.header


def test_dedup_conflicts_and_invalid_readings_are_per_reading_in_a_batch() -> None:
    sealed = {("d1", 0): reading_leaf_hash(canonical_reading(reading("d1", 0, T0), KEY))}
    w = windower(sealed=sealed, sealed_offset=4)
    bad = reading("d1", 3, T0 + 3)
    bad["vitals"]["spo2"] = 500
    readings = [reading("d1", 0, T0),  # sealed already: duplicate
                reading("d1", 1, T0 + 1),  # kept
                reading("d1", 1, T0 + 1),  # the same again in the same record: duplicate
                bad,  # invalid, alone
                reading("d1", 2, T0 + 2),  # kept
                reading("d1", 1, T0 + 9)]  # same seq, other reading: conflict
    result = w.offer(5, encode(readings, 7), b"d1")
    assert result.outcome == "kept" and result.window_id == "p3-5"
    assert [r.canonical["seq"] for r in result.kept] == [1, 2]
    assert (result.duplicates, result.conflicts, result.invalid, result.readings) == (2, 1, 1, 6)
    assert w.offer(6, encode([reading("d1", 2, T0 + 2)], 7), b"d1").outcome == "duplicate"
    closed = w.cut_idle()
    assert closed is not None and (closed.first_offset, closed.last_offset) == (5, 6)
    assert closed.header["size"] == 2 and closed.duplicates == 3
    letters = [json.loads(d.value) for d in closed.dead_letters]
    assert [x["reason"] for x in letters] == ["invalid_record", "seq_conflict"]
    assert letters[0]["detail"].startswith("readings[3]: vitals.spo2=500")
    assert letters[1]["detail"].startswith("readings[5]: device d1 seq 1")
    # The dead letter keeps the whole record, so nothing of it is lost to inspection.
    assert decode(base64.b64decode(letters[1]["payload_b64"])).readings == readings
    assert all(x["received_us"] == 7 for x in letters)


def test_late_flags_are_per_reading_in_a_batch() -> None:
    # late: sampled more than a window length (2 s) before the previous window's end, T0+1 s
    w = windower(sealed_offset=0, prev_end_us=T0 + 3 * SECOND)
    result = w.offer(1, batch("d1", 0, 5, T0 + 600_000))  # T0+0.6 .. T0+1.4 s
    assert [r.late for r in result.kept] == [True, True, False, False, False]
    assert result.late and result.late_count == 2
    closed = w.cut_idle()
    assert closed is not None and closed.header["late"] == 2


def test_old_and_new_records_in_one_partition_across_an_upgrade() -> None:
    """A topic may hold version-1 records written before the upgrade, then version-2 ones: both
    are read, and a reading the new bridge sends again (a redelivery) is a duplicate."""
    w = windower()
    old = [record(reading("d1", i, T0 + i * 200_000)) for i in range(5)]
    new = [batch("d1", 3, 5, T0 + 3 * 200_000)]  # seqs 3, 4 again, then 5..7
    results = [w.offer(i, v) for i, v in enumerate(old + new)]
    assert [r.outcome for r in results] == ["kept"] * 6
    assert (results[5].duplicates, len(results[5].kept)) == (2, 3)
    closed = w.cut_idle()
    assert closed is not None and [r.canonical["seq"] for r in closed.readings] == list(range(8))


def test_a_signed_batch_brings_its_message_with_its_first_kept_reading() -> None:
    readings = [reading("d1", i, T0 + i) for i in range(3)]
    part = signed_part(readings)
    sealed = {("d1", 0): reading_leaf_hash(canonical_reading(readings[0], KEY))}
    w = windower(sealed=sealed, sealed_offset=0)
    result = w.offer(1, encode(readings, 1, part))
    assert result.duplicates == 1
    assert [r.signed for r in result.kept] == [part, {"at": part["at"]}]


# --- the bridge writes one record per message (real Mosquitto and Kafka) ------------------

@pytest.mark.e2e
def test_the_bridge_writes_one_record_per_message_keyed_by_device(isolated) -> None:
    from tests.bridge_support import (
        Device,
        Records,
        make_reading,
        provision_device,
        running_bridge,
        unique_device,
    )
    from tests.common_support import wait_until

    dev = unique_device()
    device = Device(isolated, dev, provision_device(isolated, dev))
    raw = Records(isolated, isolated.raw_topic)
    bad = make_reading(dev, 3, hr=999)
    messages = [make_reading(dev, 0),
                {"readings": [make_reading(dev, 1), make_reading(dev, 2), bad,
                              make_reading(dev, 4)]}]
    try:
        # Bundling off (one message per record, as before bundles): two messages published
        # back to back may otherwise share a record (tests/test_record_bundles.py).
        with running_bridge(isolated, bundle_messages=1) as bridge:
            for message in messages:
                device.publish(message)
            wait_until(lambda: bridge.counters.acked == 2, 30, "both messages acked")
            assert bridge.counters.forwarded == 4 and bridge.counters.dead_lettered[
                "out_of_range"] == 1
            raw.wait_for(4, 20, "the four good readings")
        assert raw.records == 2  # one record per MQTT message, not per reading
        assert {key for key, _ in raw.items} == {dev.encode()}
        assert [item["seq"] for _, item in raw.items] == [0, 1, 2, 4]
        assert len({item["received_us"] for _, item in raw.items[1:]}) == 1
    finally:
        device.close()
        raw.close()


# --- the nesting guard's fast path (batches and raw records have many brackets) -----------

def _slow_too_deep(payload: bytes) -> bool:
    from vitalchain.core.payload.validation import _too_deep_exact

    return _too_deep_exact(payload)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"[{"', b"1", b",", b'"\\""']),
                max_size=120))
def test_the_nesting_guard_says_what_the_exact_count_says(parts: list[bytes]) -> None:
    from vitalchain.core.payload.validation import _too_deep

    payload = b"".join(parts)
    assert _too_deep(payload) == _slow_too_deep(payload)


@pytest.mark.parametrize("depth", [31, 32, 33, 64])
def test_the_nesting_guard_at_its_limit(depth: int) -> None:
    from vitalchain.core.payload.validation import _too_deep

    for opener, closer in ((b"[", b"]"), (b"[{", b"}]"), (b"{[", b"]}")):
        n = depth // len(opener)
        payload = opener * n + closer * n + b"[]" * 40  # many brackets: the fast path
        assert _too_deep(payload) == (n * len(opener) > 32) == _slow_too_deep(payload)
    assert not _too_deep(batch("d1", 0, 100, T0, signed=signed_part(
        [reading("d1", i, T0) for i in range(100)])))
