"""Validation of identifiers and times that users type into the API.

Device and patient ids follow the device schema (``devices/reading.schema.json``), so anything
that fails here could never have been stored; user names are stricter (lower case) because they
are typed on command lines and appear in audit reports.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

ID_REGEX = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
USER_REGEX = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
ROLES = ("clinician", "auditor", "admin")
# Latest instant whose nanoseconds (plus a sub-microsecond offset) fit InfluxDB's int64 time.
MAX_TIME_US = (2**63 - 1) // 1000 - 1
# Latest instant any API time may name (grant expiries): still printable as an ISO year.
MAX_ANY_US = 253_370_764_800_000_000  # 9999-01-01T00:00:00Z
_ID = re.compile(ID_REGEX)
_USER = re.compile(USER_REGEX)


def check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(f"{what} must match {ID_REGEX}")
    return value


def check_user(value: str) -> str:
    if not isinstance(value, str) or not _USER.fullmatch(value):
        raise ValueError(f"user name must match {USER_REGEX}")
    return value


def check_role(value: str) -> str:
    if value not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    return value


def parse_time_us(text: str, max_us: int = MAX_ANY_US) -> int:
    """ISO 8601 date or date-time to UTC microseconds; a time without offset is taken as UTC."""
    if not isinstance(text, str) or not 4 <= len(text) <= 40:
        raise ValueError("time must be an ISO 8601 date or date-time")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date or date-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    value = int(when.timestamp()) * 1_000_000 + when.microsecond
    if not 0 <= value <= max_us:
        raise ValueError(f"{text!r} is outside 1970-01-01..{iso_from_us(max_us)[:10]}"
                         + (" (what InfluxDB can store)" if max_us == MAX_TIME_US else ""))
    return value


def iso_from_us(ts_us: int) -> str:
    """RFC 3339 / FHIR instant in UTC with microseconds."""
    return datetime.fromtimestamp(ts_us / 1_000_000, UTC).isoformat(timespec="microseconds") \
        .replace("+00:00", "Z")
