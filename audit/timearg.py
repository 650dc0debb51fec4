"""Parsing ``--from``/``--to``: ISO 8601 or epoch microseconds, validated with clear errors."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_INT = re.compile(r"-?\d+")
# Epoch microseconds InfluxDB can hold as nanoseconds (int64): up to year 2262.
MAX_US = (2**63 - 1) // 1000 - 1


class TimeArgError(ValueError):
    """A time bound the audit cannot use."""


def parse_time_us(text: str, name: str = "time") -> int:
    """Epoch microseconds from ``text`` (an integer, or ISO 8601; naive times are UTC)."""
    text = text.strip()
    if not text:
        raise TimeArgError(f"{name} is empty: give ISO 8601 (2026-01-02T03:04:05Z) or epoch microseconds")
    if _INT.fullmatch(text):
        value = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise TimeArgError(f"{name}={text!r} is neither ISO 8601 (e.g. 2026-01-02T03:04:05Z) "
                               "nor an integer of epoch microseconds") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        value = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if not 0 <= value <= MAX_US:
        raise TimeArgError(f"{name}={text!r} is outside 1970..2262 (epoch microseconds 0..{MAX_US})")
    return value


def parse_range(start: str, end: str) -> tuple[int, int]:
    start_us, end_us = parse_time_us(start, "--from"), parse_time_us(end, "--to")
    if end_us < start_us:
        raise TimeArgError(f"--to ({end_us}) is before --from ({start_us})")
    return start_us, end_us
