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


def _fast_float(x: float) -> str | None:
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x)) if x else "0"  # -0.0 is "0" in JCS
    if 1e-4 <= abs(x) < 1e16:
        return repr(x)
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
