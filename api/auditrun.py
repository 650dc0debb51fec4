"""``POST /audit/run``: the tamper audit of :mod:`vitalchain.audit.engine` for auditors over HTTP.

An audit reads every reading of its range from InfluxDB, so the range is bounded and only one
audit runs at a time per API process (409 otherwise): a caller cannot queue up scans that starve
the clinicians' queries.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

from vitalchain.audit.engine import AuditUnavailable, run_audit
from vitalchain.config import Settings
from vitalchain.core.timeutil import TimeArgError, parse_time_us

MAX_AUDIT_RANGE_US = 31 * 86400 * 1_000_000


class AuditRange(BaseModel):
    """Range to audit: ISO 8601 or epoch microseconds (as for ``vitalchain audit --from/--to``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    start: str = Field(alias="from", min_length=1, max_length=40)
    end: str = Field(alias="to", min_length=1, max_length=40)


def parse_range(body: AuditRange) -> tuple[int, int]:
    try:
        start_us, end_us = parse_time_us(body.start, "from"), parse_time_us(body.end, "to")
    except TimeArgError as exc:
        raise HTTPException(422, str(exc)) from None
    if start_us > end_us:
        raise HTTPException(422, "from must not be after to")
    if end_us - start_us > MAX_AUDIT_RANGE_US:
        raise HTTPException(422, "an audit over HTTP covers at most 31 days; use `vitalchain audit` "
                                 "for longer ranges")
    return start_us, end_us


class AuditRunner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._busy = asyncio.Lock()

    async def run(self, body: AuditRange) -> dict[str, Any]:
        start_us, end_us = parse_range(body)
        if self._busy.locked():
            raise HTTPException(409, "an audit is already running; retry when it is done")
        async with self._busy:
            try:
                report = await run_audit(self.settings, start_us, end_us)
            except AuditUnavailable as exc:
                raise HTTPException(503, f"audit could not run: {exc}") from None
        return report.to_dict()
