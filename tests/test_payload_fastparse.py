"""The bridge's device-payload parse (orjson, taken only for orjson's own spelling) gives exactly
the strict parser's outcome: validate() forwards the same readings with the same types and
refuses the same messages with the same reasons and details, on the firmware's payloads, their
one-byte mutations and arbitrary bytes (pure, no services).

Why: validate() is the gate every device message passes; a faster parse must not move a single
verdict (duplicate keys, NaN, huge integers, nesting, encodings all as before)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

import vitalchain.core.payload.validation as validation
from tests.test_record_fastparse import typed
from vitalchain.core.integrity.devicekeys import (
    check_signature,
    key_id_of,
    load_public_key,
    private_key_from_seed,
)
from vitalchain.devices.keys import SigningKey
from vitalchain.devices.wire import MessageWriter

T0 = 1_767_225_600_000_000
NOW = T0 + 3_600_000_000
DEVICE, PATIENT = "wearable-00001", "patient-58fc52e36f"
TOPIC = f"vitals/0/{DEVICE}"
_KEY = private_key_from_seed(bytes(range(32)))
SIGNING = SigningKey(key_id_of(_KEY.public), _KEY)
_PUBLIC = load_public_key(_KEY.public)


def _signatures(device_id: str, key_id: str, sig: Any, readings: list[Any]) -> str | None:
    try:
        check_signature(_PUBLIC, key_id, sig, readings)
    except ValueError as exc:
        return str(exc)
    return None


def typed_outcome(out: Any) -> tuple[Any, ...]:
    """validate()'s outcome as plain values (readings typed as parsed, rejections, the signed
    part), so two ways of validating compare with ``==``."""
    signed = None if out.signed is None else (out.signed.key_id, out.signed.sig,
                                              typed(out.signed.readings))
    return (typed(out.readings), out.reading_indexes,
            [(r.reason, r.detail, r.index) for r in out.rejections], signed)


def run(payload: bytes, strict: bool) -> Any:
    """validate()'s outcome, typed, with the fast parse or with the strict parse in its place."""
    fast = validation.parse_canonical
    if strict:
        validation.parse_canonical = validation.parse
    try:
        out = validation.validate(TOPIC, payload, NOW, max_payload_bytes=65536,
                                  max_future_seconds=5.0, signatures=_signatures,
                                  require_signature=False)
    finally:
        validation.parse_canonical = fast
    return typed_outcome(out)


def assert_agree(payload: bytes) -> None:
    assert run(payload, strict=False) == run(payload, strict=True)


temps = st.floats(min_value=30.0, max_value=43.0) | st.integers(30, 43) | st.sampled_from(
    [36.8, 37.0, 1e-05, 1e16, 35.123456789])
readings = st.builds(
    lambda seq, hr, spo2, temp, sys_: {
        "device_id": DEVICE, "patient_id": PATIENT, "seq": seq, "ts_us": T0 + seq * 200_000,
        "vitals": {"hr": hr, "spo2": spo2, "rr": 15, "temp_c": temp, "sys": sys_, "dia": 80}},
    st.integers(0, 2**30), st.integers(20, 260), st.integers(50, 100), temps,
    st.integers(60, 250))
payloads = st.builds(
    lambda batch, signed: MessageWriter(DEVICE, PATIENT, SIGNING if signed else None).write(batch),
    st.lists(readings, min_size=1, max_size=10), st.booleans())


def test_the_firmwares_payloads_take_the_fast_path() -> None:
    """Not a tautology: the fast path is what the bridge normally runs."""
    batch = [{"device_id": DEVICE, "patient_id": PATIENT, "seq": i, "ts_us": T0 + i,
              "vitals": {"hr": 70, "spo2": 97, "rr": 15, "temp_c": 36.8, "sys": 120, "dia": 80}}
             for i in range(10)]
    payload = MessageWriter(DEVICE, PATIENT, SIGNING).write(batch)
    assert orjson.dumps(orjson.loads(payload)) == payload
    readings_, _, rejections, signed = run(payload, strict=False)
    assert len(readings_[1]) == 10 and not rejections and signed is not None


@settings(max_examples=300, deadline=None)
@given(payloads, st.data())
def test_fast_and_strict_agree_on_payloads_and_their_one_byte_mutations(
        payload: bytes, data: st.DataObject) -> None:
    assert_agree(payload)
    i = data.draw(st.integers(0, len(payload) - 1))
    b = data.draw(st.sampled_from(b'{}[]",:0123456789.eE-+ \\nNaIftyu\x00\xff'))
    for mutated in (payload[:i] + bytes([b]) + payload[i + 1:],
                    payload[:i] + bytes([b]) + payload[i:], payload[:i] + payload[i + 1:]):
        assert_agree(mutated)


_R = ('{"device_id":"wearable-00001","patient_id":"patient-58fc52e36f","seq":1,'
      '"ts_us":1767225600000000,"vitals":{"hr":70,"spo2":97,"rr":15,"temp_c":36.8,'
      '"sys":120,"dia":80}}')


@example(('{"readings":[' + _R + '],"readings":[' + _R + ']}').encode())  # duplicate key
@example(_R.replace('"hr":70', '"hr":70,"hr":71').encode())  # duplicate inside a reading
@example(_R.replace("36.8", "NaN").encode())
@example(_R.replace("36.8", "1e400").encode())  # overflows to inf
@example(_R.replace('"seq":1', '"seq":18446744073709551616').encode())  # beyond 64 bits
@example(_R.replace('"seq":1', '"seq":1.0').encode())  # a float where an integer goes
@example(_R.replace('"seq":1', '"seq":-0').encode())
@example(_R.replace("wearable-00001", "wearable-\\u0030\\u00301").encode())  # escapes
@example(_R.replace("wearable-00001", "\\ud800").encode())  # a lone surrogate
@example(b"[" * 40 + b"]" * 40)  # nesting
@example(b"[" * 300 + b"]" * 300)  # orjson reads it, cannot write it back
@example(b'{"readings":' + b"[" * 40 + b"]" * 40 + b"}")
@example(b"\xef\xbb\xbf" + _R.encode())  # a BOM
@example(_R.encode() + b"\n")
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_fast_and_strict_agree_on_odd_bytes(payload: bytes) -> None:
    assert_agree(payload)
