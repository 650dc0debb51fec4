"""An audit range from ``--from``/``--to`` (each parsed by :func:`vitalchain.core.timeutil.parse_time_us`)."""

from __future__ import annotations

from vitalchain.core.timeutil import TimeArgError, parse_time_us


def parse_range(start: str, end: str) -> tuple[int, int]:
    start_us, end_us = parse_time_us(start, "--from"), parse_time_us(end, "--to")
    if end_us < start_us:
        raise TimeArgError(f"--to ({end_us}) is before --from ({start_us})")
    return start_us, end_us
