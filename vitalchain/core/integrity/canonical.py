"""RFC 8785 (JCS) canonical JSON, with the I-JSON limits checked up front.

Every hash that an independent verifier must reproduce is computed over these bytes, so the
rules are strict: numbers must be exactly representable as IEEE doubles (integers within
``±(2**53 - 1)``, finite floats), object keys must be strings, strings must be valid Unicode.
``rfc8785`` enforces the same limits; the walk here exists to name *where* the bad value is
(``$.ts_us``), because "integer out of range" alone does not help anyone find a nanosecond
timestamp in a nested payload.

Fast path: canonicalising was most of the stream's CPU per reading (twice per reading, for the salt
and the leaf). Readings, window headers and salt inputs hold only plain ASCII strings (ids, hex),
safe integers and a few ordinary floats, for which JCS is simple: keys sorted (ASCII sorts the same
by UTF-16 code units), strings written as they are, integers in decimal, and a float as
ECMAScript's shortest round-trip form, which for ``1e-4 <= |x| < 1e16`` is Python's ``repr``
(without ``.0`` for whole numbers). :func:`_fast` writes exactly that and returns None for anything
else, which then takes the general path; tests/test_canonical_fast.py shows with hypothesis that
both paths give the same bytes as ``rfc8785`` on the whole domain of readings and headers.
"""

from __future__ import annotations

import math
import re
from typing import Any

import rfc8785

from vitalchain.errors import InvalidInput

MAX_SAFE_INTEGER = 2**53 - 1


class CanonicalError(InvalidInput):
    """The object cannot be hashed canonically; the message names the offending path."""


def check_canonicalizable(obj: Any, path: str = "$") -> None:
    """Raise :class:`CanonicalError` if ``obj`` is not representable in RFC 8785 / I-JSON."""
    if obj is None or isinstance(obj, bool):
        return
    if isinstance(obj, int):
        if abs(obj) > MAX_SAFE_INTEGER:
            raise CanonicalError(
                f"{path}: integer {obj} is outside ±(2**53 - 1) and is not exactly representable"
                " as an IEEE double; send timestamps as integer microseconds or as strings"
            )
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise CanonicalError(f"{path}: {obj!r} is not allowed in canonical JSON")
        return
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CanonicalError(f"{path}: string is not valid Unicode ({exc.reason})") from None
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CanonicalError(f"{path}: object key {key!r} is not a string")
            check_canonicalizable(key, f"{path}.<key>")
            check_canonicalizable(value, f"{path}.{key}")
        return
    if isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            check_canonicalizable(value, f"{path}[{i}]")
        return
    raise CanonicalError(f"{path}: {type(obj).__name__} is not a JSON type")


# Printable ASCII but '"' and '\\': JCS writes such strings as they are, with no escape.
_PLAIN = re.compile(r"[ !#-\[\]-~]*")


def _fast_float(x: float, spelled: str | None = None) -> str | None:
    """JCS text of float ``x`` in the plain domain, else None; ``spelled`` is ``repr(x)`` when
    the caller already made it (the device simulator writes it into the payload too)."""
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x)) if x else "0"  # -0.0 is "0" in JCS
    if 1e-4 <= abs(x) < 1e16:
        return repr(x) if spelled is None else spelled
    return None


def _fast(obj: Any) -> str | None:
    """JCS text of ``obj`` when it lies in the plain domain described above, else None."""
    kind = type(obj)
    if kind is str:
        return f'"{obj}"' if _PLAIN.fullmatch(obj) else None
    if kind is int:
        return str(obj) if -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER else None
    if kind is dict:
        parts = []
        for key in sorted(obj):
            if type(key) is not str or not _PLAIN.fullmatch(key):
                return None
            value = _fast(obj[key])
            if value is None:
                return None
            parts.append(f'"{key}":{value}')
        return "{" + ",".join(parts) + "}"
    if kind is float:
        return _fast_float(obj)
    if kind is list:
        items = [_fast(v) for v in obj]
        return None if None in items else "[" + ",".join(items) + "]"  # type: ignore[arg-type]
    if obj is None:
        return "null"
    if kind is bool:
        return "true" if obj else "false"
    return None


_READING_KEYS = frozenset({"device_id", "patient_id", "salt", "seq", "ts_us", "vitals"})
_VITAL_KEYS = ("dia", "hr", "rr", "spo2", "sys", "temp_c")  # JCS order (sorted)
_VITAL_SET = frozenset(_VITAL_KEYS)


def _fast_number(value: Any) -> str | None:
    kind = type(value)
    if kind is int:
        return str(value) if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else None
    if kind is float:
        return _fast_float(value)
    return None


def reading_json(obj: Any) -> bytes | None:
    """JCS bytes of a canonical reading (device fields + salt) in one format string, or None.

    The stream canonicalises every reading once; the generic walk (:func:`_fast`) sorts keys and
    recurses for each of its ~15 values.  A canonical reading's key set is fixed, so its JCS text
    is a template: keys in their sorted order written out, plain strings as they are, numbers as
    :func:`_fast_number` writes them.  None (the caller then takes :func:`canonical_json`) for
    anything else: another key set, a non-plain string, a bool, an unsafe integer or a float
    outside the ordinary range.  tests/test_canonical_fast.py checks byte identity with
    ``rfc8785`` by hypothesis over the reading schema's whole domain.
    """
    if type(obj) is not dict or obj.keys() != _READING_KEYS:
        return None
    vitals = obj["vitals"]
    if type(vitals) is not dict or vitals.keys() != _VITAL_SET:
        return None
    device_id, patient_id, salt = obj["device_id"], obj["patient_id"], obj["salt"]
    if (type(device_id) is not str or type(patient_id) is not str or type(salt) is not str
            or not _PLAIN.fullmatch(device_id) or not _PLAIN.fullmatch(patient_id)
            or not _PLAIN.fullmatch(salt)):
        return None
    if type(obj["seq"]) is not int or type(obj["ts_us"]) is not int:
        return None
    seq, ts_us = _fast_number(obj["seq"]), _fast_number(obj["ts_us"])
    if seq is None or ts_us is None:
        return None
    numbers = _vital_numbers(vitals)
    if numbers is None:
        return None
    dia, hr, rr, spo2, sys_, temp_c = numbers
    return (f'{{"device_id":"{device_id}","patient_id":"{patient_id}","salt":"{salt}",'
            f'"seq":{seq},"ts_us":{ts_us},"vitals":{{"dia":{dia},"hr":{hr},"rr":{rr},'
            f'"spo2":{spo2},"sys":{sys_},"temp_c":{temp_c}}}}}').encode("ascii")


def _vital_numbers(vitals: dict[str, Any]) -> list[str] | None:
    """The six vitals' JCS numbers in key order (dia, hr, rr, spo2, sys, temp_c), or None when
    one is outside the fast path's domain."""
    numbers = []
    for key in _VITAL_KEYS:
        value = vitals[key]
        if type(value) is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            numbers.append(str(value))
        else:
            text = _fast_number(value)
            if text is None:
                return None
            numbers.append(text)
    return numbers


def salt_input_json(domain: str, device_id: str, seq: int) -> bytes:
    """JCS bytes of the salt input ``[domain, device_id, seq]``: a template when both strings are
    plain and ``seq`` a safe integer (always, for valid readings), else :func:`canonical_json`."""
    if (type(device_id) is str and type(seq) is int and -MAX_SAFE_INTEGER <= seq <= MAX_SAFE_INTEGER
            and _PLAIN.fullmatch(device_id) and _PLAIN.fullmatch(domain)):
        return f'["{domain}","{device_id}",{seq}]'.encode("ascii")
    return canonical_json([domain, device_id, seq])


def canonical_json(obj: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of ``obj`` (raises :class:`CanonicalError`)."""
    fast = _fast(obj)
    if fast is not None:
        return fast.encode("ascii")
    return _general(obj)


def _general(obj: Any) -> bytes:
    """The general path: the checking walk, then ``rfc8785``."""
    check_canonicalizable(obj)
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as exc:  # belt and braces: the walk should catch all
        raise CanonicalError(str(exc)) from exc


_DEVICE_READING_KEYS = frozenset({"device_id", "patient_id", "seq", "ts_us", "vitals"})


def device_reading_json(obj: Any) -> str | None:
    """JCS text of one reading *as a device sends it* (no salt) in one format string, or None.

    What a device signs is ``JCS({"key_id", "readings"})`` (devicekeys.signed_bytes): the generic
    walk (:func:`_fast`) sorting and recursing into ~15 values per reading was half the
    simulator's CPU per reading in a profile of 1,000 and 5,000 devices (docs/PERFORMANCE.md,
    "Device simulator at 5,000 devices"), and the bridge rebuilds the same bytes to verify. The
    template is :func:`reading_json`'s without the salt; None (the caller then takes
    :func:`canonical_json`) for anything outside the plain domain. tests/test_canonical_fast.py
    checks byte identity with ``rfc8785`` by hypothesis over the reading schema's whole domain.
    """
    if type(obj) is not dict or obj.keys() != _DEVICE_READING_KEYS:
        return None
    vitals = obj["vitals"]
    if type(vitals) is not dict or vitals.keys() != _VITAL_SET:
        return None
    device_id, patient_id, seq, ts_us = obj["device_id"], obj["patient_id"], obj["seq"], obj["ts_us"]
    if (type(device_id) is not str or type(patient_id) is not str or type(seq) is not int
            or type(ts_us) is not int or not -MAX_SAFE_INTEGER <= seq <= MAX_SAFE_INTEGER
            or not -MAX_SAFE_INTEGER <= ts_us <= MAX_SAFE_INTEGER
            or not _PLAIN.fullmatch(device_id) or not _PLAIN.fullmatch(patient_id)):
        return None
    numbers = _vital_numbers(vitals)
    if numbers is None:
        return None
    dia, hr, rr, spo2, sys_, temp_c = numbers
    return (f'{{"device_id":"{device_id}","patient_id":"{patient_id}","seq":{seq},'
            f'"ts_us":{ts_us},"vitals":{{"dia":{dia},"hr":{hr},"rr":{rr},'
            f'"spo2":{spo2},"sys":{sys_},"temp_c":{temp_c}}}}}')
