"""FHIR ``date`` search values as ranges of epoch microseconds, and sets of such ranges.

FHIR treats a date search value as the *range* its precision implies (``2026-11`` is the whole
of November) and a prefix compares that range with the resource's own (R4 search, section
"date").  An Observation here has one instant with microsecond precision, ``effectiveDateTime``
= ``[t, t + 1 µs)``, so with the value's range ``[lo, hi)`` every prefix is a set of instants:

    eq  lo <= t < hi        ne  t < lo or t >= hi
    gt  t >= hi             lt  t < lo
    ge  t >= lo             le  t < hi
    sa  t >= hi (starts after the range)      eb  t < lo (ends before it)

A parameter with comma-separated values is their union; repeated parameters are intersected.
The result is a :data:`Spans` tuple of disjoint half-open ranges, in time order, within what
InfluxDB can store; the paging code walks those spans.  Pure functions: no I/O.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from vitalchain.core.timeutil import MAX_TIME_US, iso_from_us
from vitalchain.errors import InvalidInput

Span = tuple[int, int]
Spans = tuple[Span, ...]
UNIVERSE: Spans = ((0, MAX_TIME_US + 1),)
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATE = re.compile(
    r"(?P<y>\d{4})(?:-(?P<mo>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d{1,6}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?")
# '+' in a query string decodes to ' ': a client that did not escape "+01:00" sends " 01:00".
_UNESCAPED_PLUS = re.compile(r"(T[0-9:.]+) (\d{2}:\d{2})$")


class DateValueError(InvalidInput):
    """A date search value this server cannot turn into a range (the message says why)."""


def _us(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def value_range(text: str) -> Span:
    """``[lo, hi)`` in epoch µs of one date value without prefix, at the precision written.

    Year, month, day, minute, second or fraction of a second; a time without offset, and every
    date without time, is UTC (the server's time zone, which FHIR lets the server choose)."""
    text = _UNESCAPED_PLUS.sub(r"\1+\2", text)
    match = _DATE.fullmatch(text)
    if match is None:
        raise DateValueError(f"{text!r} is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD, "
                             "YYYY-MM-DDThh:mm[:ss[.ffffff]][Z|+hh:mm|-hh:mm])")
    g = match.groupdict()
    year = int(g["y"])
    if not 1970 <= year <= 2262:
        raise DateValueError(f"{text!r} is outside 1970-01-01..{iso_from_us(MAX_TIME_US)[:10]} "
                             "(what InfluxDB can store)")
    tz = UTC
    if g["tz"] and g["tz"] != "Z":
        sign = -1 if g["tz"][0] == "-" else 1
        hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
        if hours > 14 or minutes > 59:
            raise DateValueError(f"{text!r} has an impossible time zone offset")
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    fraction = g["f"] or ""
    try:
        start = datetime(year, int(g["mo"] or 1), int(g["d"] or 1), int(g["h"] or 0),
                         int(g["mi"] or 0), int(g["s"] or 0), int(fraction.ljust(6, "0")), tz)
    except ValueError as exc:
        raise DateValueError(f"{text!r} is not a valid date: {exc}") from None
    if g["f"] is not None:
        end = start + timedelta(microseconds=10 ** (6 - len(fraction)))
    elif g["s"] is not None:
        end = start + timedelta(seconds=1)
    elif g["h"] is not None:
        end = start + timedelta(minutes=1)
    elif g["d"] is not None:
        end = start + timedelta(days=1)
    elif g["mo"] is not None:
        end = start.replace(year=year + (start.month == 12), month=start.month % 12 + 1)
    else:
        end = start.replace(year=year + 1)
    lo, hi = _us(start), _us(end)
    if lo < 0 or hi - 1 > MAX_TIME_US:
        raise DateValueError(f"{text!r} is outside 1970-01-01..{iso_from_us(MAX_TIME_US)[:10]} "
                             "(what InfluxDB can store)")
    return lo, hi


def prefixed(value: str) -> Spans:
    """The instants one ``[prefix]value`` matches (no prefix means ``eq``)."""
    prefix, rest = value[:2], value[2:]
    if prefix == "ap":
        raise DateValueError("prefix 'ap' (approximately) is not supported: use ge/le with the "
                             "range you mean")
    if not prefix.isalpha():
        prefix, rest = "eq", value
    elif prefix not in PREFIXES:
        raise DateValueError(f"{value!r}: unknown prefix {prefix!r} (supported: "
                             f"{', '.join(PREFIXES)}; none means eq)")
    lo, hi = value_range(rest)
    end = UNIVERSE[0][1]
    spans = {"eq": ((lo, hi),), "ne": ((0, lo), (hi, end)), "gt": ((hi, end),),
             "sa": ((hi, end),), "lt": ((0, lo),), "eb": ((0, lo),), "ge": ((lo, end),),
             "le": ((0, hi),)}[prefix]
    return normalized(spans)


def normalized(spans: Spans | list[Span]) -> Spans:
    """Sorted, merged, non-empty spans."""
    out: list[Span] = []
    for lo, hi in sorted(s for s in spans if s[0] < s[1]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def union(groups: list[Spans]) -> Spans:
    return normalized([s for spans in groups for s in spans])


def intersection(a: Spans, b: Spans) -> Spans:
    out = [(max(x0, y0), min(x1, y1)) for x0, x1 in a for y0, y1 in b]
    return normalized(out)
