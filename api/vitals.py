"""Vital signs out of InfluxDB for clinicians: latest reading, downsampled series, raw readings.

Every reading is verified against the ledger before it is used (``vitalchain.storage.verified``):
only ``unsealed``, ``sealed`` and ``anchored`` readings give values, a latest reading or an
average; ``altered`` and ``unknown`` ones are *withheld*: listed with their state and the reason,
never with their values.  Averages are therefore computed here, in Python, over the verified raw
points of the range, not by InfluxDB's ``GROUP BY time()``, which would average in whatever an
attacker wrote.

Every value a user chose reaches InfluxQL only as a bound parameter (``$patient``, ``$start``,
...); the only text formatted into queries is a LIMIT/OFFSET the server computes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vitalchain.storage.influx import InfluxClient, quote_ident
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.readings import READINGS_MEASUREMENT, VITAL_FIELDS, point_time_ns
from vitalchain.storage.verified import ReadState, ReadVerifier, VerifiedReading

MAX_POINTS = 500
# A vitals request verifies every raw reading of its range (docs/PERFORMANCE.md for the cost);
# past this many it is refused with a message rather than left to run for minutes.
MAX_VERIFIED_READINGS = 100_000
PAGE_ROWS = 5000
LATEST_PAGE_ROWS = 100
LATEST_SCAN_ROWS = 1000  # newest points looked at for a servable latest reading
MAX_WITHHELD_LISTED = 1000
# Intervals a series may be grouped by: round numbers, so buckets line up with clock time.
NICE_INTERVALS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
                    21600, 43200, 86400, 172800, 604800)
_M = quote_ident(READINGS_MEASUREMENT)


def choose_interval_s(start_us: int, end_us: int, max_points: int = MAX_POINTS) -> int:
    """The smallest nice interval giving at most ``max_points`` buckets over the range."""
    span_s = max(1.0, (end_us - start_us) / 1e6)
    need = math.ceil(span_s / max_points)
    for interval in NICE_INTERVALS_S:
        if interval >= need:
            return interval
    return math.ceil(need / 86400) * 86400


class TooManyReadings(ValueError):
    """The range holds more readings than one verified request may check."""


async def _verified(verifier: ReadVerifier, rows: list[dict[str, Any]]) -> list[VerifiedReading]:
    """Verify in a worker thread: hashing and SQLite must not stall the event loop."""
    return await asyncio.to_thread(verifier.verify, rows)


def _where(patient_id: str, start_us: int | None, end_us: int | None) -> tuple[str, dict[str, Any]]:
    where = ["\"patient_id\" = $patient"]
    params: dict[str, Any] = {"patient": patient_id}
    if start_us is not None:
        where.append("time >= $start")
        params["start"] = start_us * 1000
    if end_us is not None:
        where.append("time <= $end")
        params["end"] = end_us * 1000 + 999
    return " AND ".join(where), params


async def latest_reading(influx: InfluxClient, verifier: ReadVerifier,
                         patient_id: str) -> dict[str, Any]:
    """The newest *servable* reading, and the altered/unknown ones newer than it (withheld).

    Looks at no more than ``LATEST_SCAN_ROWS`` newest points: if none of them is servable the
    answer says so (``latest`` None, ``withheld_truncated``) instead of scanning without end.
    """
    where, params = _where(patient_id, None, None)
    withheld: list[dict[str, Any]] = []
    offset = 0
    while offset < LATEST_SCAN_ROWS:
        rows = await influx.query(f"SELECT * FROM {_M} WHERE {where} ORDER BY time DESC "
                                  f"LIMIT {LATEST_PAGE_ROWS} OFFSET {offset}", params)
        for v in await _verified(verifier, rows):
            if v.servable:
                return {"latest": v.served(), "withheld": withheld, "withheld_truncated": False}
            withheld.append(v.served())
        if len(rows) < LATEST_PAGE_ROWS:
            return {"latest": None, "withheld": withheld, "withheld_truncated": False}
        offset += len(rows)
    return {"latest": None, "withheld": withheld, "withheld_truncated": True}


async def missing_newer(influx: InfluxClient, ledger: Ledger, devices: Sequence[str],
                        latest: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Sealed readings newer than ``latest`` whose point is gone from InfluxDB (deleted).

    Verified reads withhold what is altered or unknown, but a *deleted* newest reading would
    just leave an older one as "latest".  For each of the patient's devices the ledger's newest
    sealed reading is looked up; if it is newer than ``latest`` and InfluxDB has no point for it,
    it is reported.  One indexed SQLite query per device, and one InfluxDB query only then.
    """
    out = []
    for device in devices:
        loc = await asyncio.to_thread(ledger.newest_sealed, device)
        if loc is None or (latest is not None and loc.ts_us <= latest["ts_us"]):
            continue
        rows = await influx.query(f"SELECT \"seq\" FROM {_M} WHERE \"device_id\" = $device "
                                  f"AND time = {point_time_ns(loc.ts_us, loc.seq)}",
                                  {"device": device})
        if any(r.get("seq") == loc.seq for r in rows):
            continue  # stored: it is served or listed as withheld
        out.append({"device_id": device, "seq": loc.seq, "ts_us": loc.ts_us, "state": "missing",
                    "window_id": loc.window_id,
                    "reason": f"sealed in window {loc.window_id}, newer than the latest reading "
                              "shown, and absent from InfluxDB: deleted after sealing?"})
    return out


@dataclass
class _Bucket:
    n: int = 0
    unsealed: int = 0
    total: dict[str, float] = field(default_factory=dict)
    low: dict[str, float] = field(default_factory=dict)
    high: dict[str, float] = field(default_factory=dict)

    def add(self, vitals: dict[str, Any], unsealed: bool) -> None:
        self.n += 1
        self.unsealed += unsealed
        for name in VITAL_FIELDS:
            value = float(vitals[name])
            self.total[name] = self.total.get(name, 0.0) + value
            self.low[name] = min(self.low.get(name, value), value)
            self.high[name] = max(self.high.get(name, value), value)

    def point(self, ts_us: int) -> dict[str, Any]:
        out: dict[str, Any] = {"ts_us": ts_us, "n": self.n, "n_unsealed": self.unsealed}
        for name in VITAL_FIELDS:
            out.update({name: self.total[name] / self.n, f"{name}_min": self.low[name],
                        f"{name}_max": self.high[name]})
        return out


async def downsampled(influx: InfluxClient, verifier: ReadVerifier, patient_id: str,
                      start_us: int, end_us: int, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """Per-interval mean/min/max of each vital over the *servable* readings of the range.

    Raw points are read in pages, each verified, and only servable ones are aggregated, so an
    altered or inserted point can never move an average.  Also returned: the late readings, the
    withheld ones (at most ``MAX_WITHHELD_LISTED`` listed, all counted) and a count per state.
    Raises :class:`TooManyReadings` past ``MAX_VERIFIED_READINGS`` points.
    """
    interval = choose_interval_s(start_us, end_us, max_points)
    interval_us = interval * 1_000_000
    where, params = _where(patient_id, start_us, end_us)
    buckets: dict[int, _Bucket] = {}
    states = {s.value: 0 for s in ReadState}
    late: list[dict[str, Any]] = []
    withheld: list[dict[str, Any]] = []
    offset = 0
    while True:
        rows = await influx.query(f"SELECT * FROM {_M} WHERE {where} ORDER BY time "
                                  f"LIMIT {PAGE_ROWS} OFFSET {offset}", params)
        offset += len(rows)
        if offset > MAX_VERIFIED_READINGS:
            raise TooManyReadings(
                f"the range holds more than {MAX_VERIFIED_READINGS} readings, the most one "
                "verified request checks: ask for a shorter range")
        for v in await _verified(verifier, rows):
            states[v.state.value] += 1
            if not v.servable or v.stored is None or v.ts_us is None:
                if len(withheld) < MAX_WITHHELD_LISTED:
                    withheld.append(v.served())
                continue
            key = v.ts_us // interval_us * interval_us
            buckets.setdefault(key, _Bucket()).add(v.stored.canonical["vitals"],
                                                   v.state is ReadState.UNSEALED)
            if v.stored.late and len(late) < MAX_WITHHELD_LISTED:
                late.append({"device_id": v.device_id, "seq": v.seq, "ts_us": v.ts_us,
                             "window_id": v.window_id, "state": v.state.value})
        if len(rows) < PAGE_ROWS:
            break
    return {"interval_s": interval,
            "points": [buckets[k].point(k) for k in sorted(buckets)],
            "late": late, "withheld": withheld,
            "withheld_total": states["altered"] + states["unknown"],
            "states": states, "verified": offset}


async def readings(influx: InfluxClient, verifier: ReadVerifier, patient_id: str,
                   start_us: int | None, end_us: int | None,
                   limit: int) -> Sequence[VerifiedReading]:
    """Raw readings of a patient in time order (for FHIR), at most ``limit``, each verified.

    Withheld ones are returned too (FHIR shows them as ``entered-in-error``, without values)."""
    where, params = _where(patient_id, start_us, end_us)
    rows = await influx.query(f"SELECT * FROM {_M} WHERE {where} "
                              f"ORDER BY time LIMIT {int(limit)}", params)
    return await _verified(verifier, rows)
