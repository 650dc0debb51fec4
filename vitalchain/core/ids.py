"""Validation of the identifiers users type (device, patient and user ids, roles).

Device and patient ids follow the device schema (``vitalchain/core/payload/reading.schema.json``), so anything
that fails here could never have been stored; user names are stricter (lower case) because they
are typed on command lines and appear in audit reports.
"""

from __future__ import annotations

import re

ID_REGEX = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
USER_REGEX = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
ROLES = ("clinician", "auditor", "admin")
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


