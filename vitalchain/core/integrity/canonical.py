"""RFC 8785 (JCS) canonical JSON, with the I-JSON limits checked up front.

Every hash that an independent verifier must reproduce is computed over these bytes, so the
rules are strict: numbers must be exactly representable as IEEE doubles (integers within
``±(2**53 - 1)``, finite floats), object keys must be strings, strings must be valid Unicode.
``rfc8785`` enforces the same limits; the walk here exists to name *where* the bad value is
(``$.ts_us``), because "integer out of range" alone does not help anyone find a nanosecond
timestamp in a nested payload.
"""

from __future__ import annotations

import math
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


def canonical_json(obj: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of ``obj`` (raises :class:`CanonicalError`)."""
    check_canonicalizable(obj)
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as exc:  # belt and braces: the walk should catch all
        raise CanonicalError(str(exc)) from exc
