"""The signed bytes validate() writes from checked readings (``SignedReadings``) are exactly the
bytes ``devicekeys.signed_bytes`` rebuilds, and taking them changes no verdict (pure, no services).

Why: the bridge verifies every signed message over these bytes; one byte off and a genuine
message is refused (or, worse, bytes the device never signed are checked)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import vitalchain.core.payload.validation as validation
from tests.test_payload_fastparse import DEVICE, NOW, PATIENT, SIGNING, T0, TOPIC, payloads
from vitalchain.core.integrity.devicekeys import (
    SignatureError,
    check_signature,
    load_public_key,
    signed_bytes,
)
from vitalchain.core.payload.validation import SignedReadings
from vitalchain.devices.wire import MessageWriter

_PUBLIC = load_public_key(SIGNING.private_key.public)


def _verdicts(payload: bytes, use_bytes: bool, seen: list[bytes]) -> Any:
    """validate()'s outcome with a hook that verifies over the bytes validate() wrote (checking
    they are signed_bytes' own) or one that rebuilds them, as before."""
    def hook(device_id: str, key_id: str, sig: Any, readings: list[Any]) -> str | None:
        data = getattr(readings, "signed_bytes", None)
        if data is not None:
            assert type(readings) is SignedReadings
            assert data == signed_bytes(key_id, list(readings))
            seen.append(data)
        try:
            check_signature(_PUBLIC, key_id, sig, list(readings), data if use_bytes else None)
        except SignatureError as exc:
            return str(exc)
        return None

    out = validation.validate(TOPIC, payload, NOW, max_payload_bytes=65536,
                              max_future_seconds=5.0, signatures=hook, require_signature=False)
    signed = None if out.signed is None else (out.signed.key_id, out.signed.sig,
                                              type(out.signed.readings), out.signed.readings)
    return (out.readings, out.reading_indexes,
            [(r.reason, r.detail, r.index) for r in out.rejections], signed)


def _agree(payload: bytes) -> None:
    assert _verdicts(payload, True, []) == _verdicts(payload, False, [])


def test_the_firmwares_signed_message_is_verified_over_the_written_bytes() -> None:
    batch = [{"device_id": DEVICE, "patient_id": PATIENT, "seq": i, "ts_us": T0 + i,
              "vitals": {"hr": 70, "spo2": 97, "rr": 15, "temp_c": 37.0 if i % 2 else 36.8,
                         "sys": 120, "dia": 80}} for i in range(10)]
    seen: list[bytes] = []
    readings, _, rejections, signed = _verdicts(MessageWriter(DEVICE, PATIENT, SIGNING)
                                                .write(batch), True, seen)
    assert len(readings) == 10 and not rejections and signed is not None
    assert signed[2] is list  # the outcome keeps the plain list
    assert len(seen) == 1  # not a tautology: the written bytes were used
    # One reading out of range: every reading is not valid, so the hook rebuilds (as before).
    batch[3]["vitals"]["hr"] = 999
    seen.clear()
    readings, _, rejections, signed = _verdicts(MessageWriter(DEVICE, PATIENT, SIGNING)
                                                .write(batch), True, seen)
    assert len(readings) == 9 and [r[0] for r in rejections] == ["out_of_range"]
    assert signed is not None and not seen


def test_a_forged_message_fails_over_the_written_bytes_too() -> None:
    batch = [{"device_id": DEVICE, "patient_id": PATIENT, "seq": 1, "ts_us": T0,
              "vitals": {"hr": 70, "spo2": 97, "rr": 15, "temp_c": 36.8, "sys": 120, "dia": 80}}]
    payload = MessageWriter(DEVICE, PATIENT, SIGNING).write(batch)
    forged = payload.replace(b'"hr":70', b'"hr":71')
    seen: list[bytes] = []
    readings, _, rejections, signed = _verdicts(forged, True, seen)
    assert seen and not readings and signed is None
    assert [r[0] for r in rejections] == ["bad_signature"]
    _agree(forged)


@settings(max_examples=300, deadline=None)
@given(payloads, st.data())
def test_written_and_rebuilt_bytes_give_the_same_verdicts(payload: bytes,
                                                          data: st.DataObject) -> None:
    """On the firmware's payloads and their one-byte mutations (a changed digit: the signature
    fails over both; a broken reading: the rebuild path), both hooks decide alike."""
    _agree(payload)
    i = data.draw(st.integers(0, len(payload) - 1))
    b = data.draw(st.sampled_from(b'{}[]",:0123456789.eE-+ \\nNaIftyu\x00\xff'))
    for mutated in (payload[:i] + bytes([b]) + payload[i + 1:],
                    payload[:i] + bytes([b]) + payload[i:], payload[:i] + payload[i + 1:]):
        _agree(mutated)
