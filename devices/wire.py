"""A device's MQTT payload and the bytes it signs, written in one pass per reading.

The payload contract is unchanged: the bytes are exactly ``encode``'s (``json.dumps`` of the
message, compact separators, ASCII) and the signature is over ``JCS({"key_id", "readings"})``
(``devicekeys.signed_bytes``). What changed is how they are written. A profile of 1,000 and 5,000
devices found the generic JSON encoder and the generic canonicaliser together at about a third
of the simulator's CPU per reading (docs/PERFORMANCE.md, "Device simulator at 5,000 devices"),
although a device writes one shape only: its own ids, an integer seq and timestamp, five integer
vitals and one float. :class:`MessageWriter` checks a reading is that shape (keys in the order the
firmware builds them, exact types, safe integers, a float in the range where ``repr`` and JCS agree
digit for digit) and then writes both texts from one template; anything else goes the generic
way. tests/test_devices_wire.py shows by hypothesis that both ways give the same bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from vitalchain.core.integrity.canonical import MAX_SAFE_INTEGER, _fast_float
from vitalchain.core.integrity.devicekeys import b64url, sign_message, signed_envelope
from vitalchain.devices.keys import SigningKey

Reading = dict[str, Any]

_READING_ORDER = ("device_id", "patient_id", "seq", "ts_us", "vitals")
_VITAL_ORDER = ("hr", "spo2", "rr", "temp_c", "sys", "dia")  # as physiology builds them
# Printable ASCII but '"' and '\\': json.dumps and JCS both write such a string as it is.
_PLAIN = re.compile(r"[ !#-\[\]-~]*")
_M = MAX_SAFE_INTEGER


def generic_encode(readings: Sequence[Reading], signing: SigningKey | None = None) -> bytes:
    """The payload as the generic encoders write it (the reference for :class:`MessageWriter`)."""
    readings = list(readings)
    if signing is not None:
        sig = sign_message(signing.private_key, signing.key_id, readings)
        body: Any = {"key_id": signing.key_id, "sig": sig, "readings": readings}
    else:
        body = readings[0] if len(readings) == 1 else {"readings": readings}
    return json.dumps(body, separators=(",", ":")).encode()


class MessageWriter:
    """One device's payload writer: ``write(readings)`` gives the same bytes as
    :func:`generic_encode` ``(readings, signing)``, from templates when every reading is in the
    firmware's own shape."""

    def __init__(self, device_id: str, patient_id: str, signing: SigningKey | None) -> None:
        self.signing = signing
        plain = (type(device_id) is str and type(patient_id) is str and _PLAIN.fullmatch(device_id)
                 and _PLAIN.fullmatch(patient_id)
                 and (signing is None or _PLAIN.fullmatch(signing.key_id)))
        self._ids = (device_id, patient_id) if plain else None
        self._head = f'{{"device_id":"{device_id}","patient_id":"{patient_id}","seq":'
        self._sign: Callable[[bytes], bytes] | None = (
            signing.private_key.sign if signing is not None else None)

    def _texts(self, reading: Any) -> tuple[str, str] | None:
        """(payload text, JCS text) of one reading, or None when it is not in the device's shape."""
        if self._ids is None or type(reading) is not dict or tuple(reading) != _READING_ORDER:
            return None
        if (reading["device_id"], reading["patient_id"]) != self._ids:
            return None
        seq, ts_us, vitals = reading["seq"], reading["ts_us"], reading["vitals"]
        if (type(seq) is not int or type(ts_us) is not int or not -_M <= seq <= _M
                or not -_M <= ts_us <= _M or type(vitals) is not dict
                or tuple(vitals) != _VITAL_ORDER):
            return None
        hr, spo2, rr, temp_c, sys_, dia = vitals.values()
        if not (type(hr) is type(spo2) is type(rr) is type(sys_) is type(dia) is int
                and -_M <= hr <= _M and -_M <= spo2 <= _M and -_M <= rr <= _M
                and -_M <= sys_ <= _M and -_M <= dia <= _M):
            return None
        kind = type(temp_c)
        if kind is float:
            # the repr shared by both texts when the value is not integral
            wire_temp = repr(temp_c)
            jcs_temp = _fast_float(temp_c, wire_temp)
            if jcs_temp is None:
                return None
        elif kind is int and -_M <= temp_c <= _M:
            jcs_temp = wire_temp = str(temp_c)
        else:
            return None
        head = f'{self._head}{seq},"ts_us":{ts_us},"vitals":{{'
        return (f'{head}"hr":{hr},"spo2":{spo2},"rr":{rr},"temp_c":{wire_temp},"sys":{sys_},'
                f'"dia":{dia}}}}}',
                f'{head}"dia":{dia},"hr":{hr},"rr":{rr},"spo2":{spo2},"sys":{sys_},'
                f'"temp_c":{jcs_temp}}}}}')

    def write(self, readings: Sequence[Reading]) -> bytes:
        """The MQTT payload of ``readings`` (signed when the device has a key)."""
        wire: list[str] = []
        jcs: list[str] = []
        for reading in readings:
            texts = self._texts(reading)
            if texts is None:
                return generic_encode(readings, self.signing)
            wire.append(texts[0])
            jcs.append(texts[1])
        if not wire:
            return generic_encode(readings, self.signing)
        if self.signing is None or self._sign is None:
            return (wire[0] if len(wire) == 1 else f'{{"readings":[{",".join(wire)}]}}').encode("ascii")
        key_id = self.signing.key_id
        signed = signed_envelope(key_id, jcs)
        sig = b64url(self._sign(signed))
        return f'{{"key_id":"{key_id}","sig":"{sig}","readings":[{",".join(wire)}]}}'.encode("ascii")
