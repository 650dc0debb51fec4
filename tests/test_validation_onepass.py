"""validate()'s one pass over a message's readings (``all_pass``) gives exactly the verdict of
the per-reading checks (``check_reading`` then the context); the signed bytes written in one call
(``checked_signed_bytes``) are exactly ``rfc8785``'s and ``signed_envelope``'s; and validate()'s
whole outcome is the same with the one pass and without it (pure, no services).

Why: validate() is the gate every device message passes and the signed bytes it writes are what
the device's signature is checked over: one verdict moved or one byte off and a genuine reading
is refused, or one that should be refused is forwarded."""

from __future__ import annotations

import json
from typing import Any

import rfc8785
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import vitalchain.core.payload.validation as validation
from tests.test_leafpath import ALTERATIONS, altered, odd_values
from tests.test_payload_fastparse import DEVICE, NOW, PATIENT, SIGNING, T0, TOPIC, payloads, typed_outcome
from vitalchain.core.integrity.canonical import CanonicalError
from vitalchain.core.integrity.devicekeys import check_signature, load_public_key, signed_envelope
from vitalchain.core.payload.limits import ID_PATTERN, MAX_JSON_INT, MIN_TS_US, VITAL_LIMITS
from vitalchain.devices.wire import MessageWriter

LATEST = NOW + 5_000_000
_PUBLIC = load_public_key(SIGNING.private_key.public)
ids = st.from_regex(ID_PATTERN, fullmatch=True)
vitals = st.fixed_dictionaries({
    name: (st.floats(lo, hi, allow_nan=False) | st.integers(int(lo), int(hi))) if name == "temp_c"
    else st.integers(int(lo), int(hi)) for name, (lo, hi) in VITAL_LIMITS.items()})
# The topic's device (as the bridge's readings are), or another valid id (a device mismatch).
readings = st.fixed_dictionaries({
    "device_id": st.just(DEVICE) | ids, "patient_id": st.just(PATIENT) | ids,
    "seq": st.integers(0, MAX_JSON_INT),
    "ts_us": st.integers(MIN_TS_US, MAX_JSON_INT) | st.integers(LATEST - 3, LATEST + 3),
    "vitals": vitals})


def slow(items: list[Any]) -> bool:
    """The per-reading way: every reading through check_reading and the context check."""
    try:
        for item in items:
            validation._check_context(validation.check_reading(item), DEVICE, NOW, LATEST)
    except validation._Reject:
        return False
    return True


def fast(items: list[Any]) -> bool:
    return validation.all_pass(items, DEVICE, LATEST)


def _valid(reading: Any) -> bool:
    try:
        validation.check_reading(reading)
    except validation._Reject:
        return False
    return True


@settings(max_examples=1500, deadline=None)
@given(st.lists(readings, min_size=1, max_size=5))
def test_schema_readings_pass_exactly_when_the_checks_pass(batch: list[dict[str, Any]]) -> None:
    assert fast(batch) == slow(batch)


# temp_c at its edges, integral floats (JCS "37", orjson "37.0"), integers, one decimal.
temps = (st.floats(25.0, 45.0) | st.integers(25, 45).map(float) | st.integers(25, 45)
         | st.integers(250, 450).map(lambda t: t / 10) | st.sampled_from([25.0, 45.0, 37.0]))
key_ids = st.from_regex(r"[0-9a-f]{32}", fullmatch=True)


@example("0" * 32, [{"device_id": "a.0", "patient_id": "b.0", "seq": 0, "ts_us": MIN_TS_US,
                     "vitals": {"hr": 20, "spo2": 100, "rr": 80, "temp_c": 37.0, "sys": 300,
                                "dia": 200}}], [37.0, 25.0, 45.0, 36.6])
@settings(max_examples=2000, deadline=None)
@given(key_ids, st.lists(readings, min_size=1, max_size=4), st.lists(temps, min_size=4,
                                                                     max_size=4))
def test_the_signed_bytes_of_checked_readings_are_rfc8785s(
        key_id: str, batch: list[dict[str, Any]], temps_: list[Any]) -> None:
    for reading, temp in zip(batch, temps_, strict=False):
        reading["vitals"]["temp_c"] = temp
    assume(all(_valid(r) for r in batch))  # dia >= sys is drawn too
    data = validation.checked_signed_bytes(key_id, batch)
    assert data == rfc8785.dumps({"key_id": key_id, "readings": batch})
    assert data == signed_envelope(key_id, [rfc8785.dumps(r).decode() for r in batch])


def test_the_signed_bytes_at_temp_c_edges_are_rfc8785s() -> None:
    """The values where orjson and JCS part ways or a limit sits: an integral float ("37" in JCS,
    "37.0" in repr), both limits, the shortest round trip, an integer."""
    for temp in (37.0, 25.0, 45.0, 36.6, 44.99999999999999, 37):
        batch = [{"device_id": DEVICE, "patient_id": PATIENT, "seq": 1, "ts_us": T0,
                  "vitals": {"hr": 70, "spo2": 97, "rr": 15, "temp_c": temp, "sys": 120,
                             "dia": 80}}]
        key_id = "0123456789abcdef" * 2
        assert validation.checked_signed_bytes(key_id, batch) == rfc8785.dumps(
            {"key_id": key_id, "readings": batch})


@settings(max_examples=2000, deadline=None)
@given(st.lists(readings, min_size=1, max_size=4), st.data())
def test_altered_readings_are_refused_or_written_exactly_as_before(
        batch: list[dict[str, Any]], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(batch) - 1))
    batch[i] = altered(batch[i], data, (*ALTERATIONS, "none"))
    assert fast(batch) == slow(batch)


@example(["not a reading"])
@example([{"device_id": DEVICE}])
@settings(max_examples=300, deadline=None)
@given(st.lists(odd_values, min_size=1, max_size=3))
def test_any_value_is_refused_or_written_exactly_as_before(items: list[Any]) -> None:
    assert fast(items) == slow(items)


def _signatures(device_id: str, key_id: str, sig: Any, given_: list[Any]) -> str | None:
    try:
        check_signature(_PUBLIC, key_id, sig, given_,
                        getattr(given_, "signed_bytes", None))
    except ValueError as exc:
        return str(exc)
    return None


def run(payload: bytes, one_pass: bool) -> Any:
    """validate()'s outcome, typed, with the one pass or with every message sent the per-reading
    way (``all_pass`` answering False)."""
    one = validation.all_pass
    if not one_pass:
        validation.all_pass = lambda items, device_id, latest_us: False
    try:
        out = validation.validate(TOPIC, payload, NOW, max_payload_bytes=65536,
                                  max_future_seconds=5.0, signatures=_signatures,
                                  require_signature=False)
    finally:
        validation.all_pass = one
    return typed_outcome(out)


def test_the_firmwares_messages_take_the_one_pass() -> None:
    """Not a tautology: the one pass is what the bridge normally runs, and it forwards."""
    batch = [{"device_id": DEVICE, "patient_id": PATIENT, "seq": i, "ts_us": T0 + i,
              "vitals": {"hr": 70, "spo2": 97, "rr": 15, "temp_c": 36.8, "sys": 120, "dia": 80}}
             for i in range(10)]
    assert fast(batch)
    out = run(MessageWriter(DEVICE, PATIENT, SIGNING).write(batch), one_pass=True)
    assert len(out[0][1]) == 10 and not out[2] and out[3] is not None


@settings(max_examples=300, deadline=None)
@given(payloads, st.data())
def test_validate_agrees_on_payloads_and_their_one_byte_mutations(
        payload: bytes, data: st.DataObject) -> None:
    assert run(payload, True) == run(payload, False)
    i = data.draw(st.integers(0, len(payload) - 1))
    b = data.draw(st.sampled_from(b'{}[]",:0123456789.eE-+ \\nNaIftyu\x00\xff'))
    for mutated in (payload[:i] + bytes([b]) + payload[i + 1:],
                    payload[:i] + bytes([b]) + payload[i:], payload[:i] + payload[i + 1:]):
        assert run(mutated, True) == run(mutated, False)


@settings(max_examples=300, deadline=None)
@given(st.lists(readings, min_size=1, max_size=6), st.data(), st.booleans())
def test_validate_agrees_on_messages_with_altered_readings(
        batch: list[dict[str, Any]], data: st.DataObject, signed: bool) -> None:
    """Mixed devices, invalid readings among valid ones, future timestamps, signed or not."""
    i = data.draw(st.integers(0, len(batch) - 1))
    batch[i] = altered(batch[i], data, (*ALTERATIONS, "none"))
    try:
        payload = MessageWriter(DEVICE, PATIENT, SIGNING if signed else None).write(batch)
    except CanonicalError:  # nothing to sign (a huge integer): a signature that cannot verify
        payload = json.dumps({"key_id": SIGNING.key_id, "sig": "A" * 86,
                              "readings": batch}).encode()
    assert run(payload, True) == run(payload, False)
