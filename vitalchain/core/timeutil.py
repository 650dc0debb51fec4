"""Time in vitalchain: epoch microseconds (UTC) everywhere, parsed and printed in one place.

Users type times on command lines (``--from``, ``--to``, ``--until``) and in API queries; devices
and stores carry integers of epoch microseconds. One parser keeps the accepted forms and the error
messages identical across the CLI, the API and the audit.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from vitalchain.errors import InvalidInput

# Latest instant whose nanoseconds (plus a sub-microsecond offset) fit InfluxDB's int64 time.
MAX_TIME_US = (2**63 - 1) // 1000 - 1
# Latest instant any API time may name (grant expiries): still printable as an ISO year.
MAX_ANY_US = 253_370_764_800_000_000  # 9999-01-01T00:00:00Z
_INT = re.compile(r"-?\d+")


class TimeArgError(InvalidInput):
    """A time a user gave that vitalchain cannot use; the message names it and the accepted forms."""


def now_us() -> int:
    """The wall clock in epoch microseconds."""
    return time.time_ns() // 1000


def iso_from_us(ts_us: int) -> str:
    """RFC 3339 / FHIR instant in UTC with microseconds."""
    return datetime.fromtimestamp(ts_us / 1_000_000, UTC).isoformat(timespec="microseconds") \
        .replace("+00:00", "Z")


def parse_time_us(text: str, name: str = "time", *, max_us: int = MAX_TIME_US, integers: bool = True) -> int:
    """Epoch microseconds from ISO 8601 (a date, or a date-time; no offset means UTC) or, when
    ``integers``, from an integer of epoch microseconds. Outside ``0..max_us`` is an error."""
    if not isinstance(text, str) or len(text.strip()) > 40:
        raise TimeArgError(f"{name} must be an ISO 8601 date or date-time")
    text = text.strip()
    if not text:
        raise TimeArgError(f"{name} is empty: give ISO 8601 (2026-01-02T03:04:05Z)"
                           + (" or epoch microseconds" if integers else ""))
    if integers and _INT.fullmatch(text):
        value = int(text)
    else:
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise TimeArgError(f"{name}={text!r} is not ISO 8601 (e.g. 2026-01-02T03:04:05Z)"
                               + (" nor an integer of epoch microseconds" if integers else "")) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        value = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if not 0 <= value <= max_us:
        raise TimeArgError(f"{name}={text!r} is outside 1970-01-01..{iso_from_us(max_us)[:10]}"
                           + (" (what InfluxDB can store)" if max_us == MAX_TIME_US else ""))
    return value
