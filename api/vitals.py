"""Vital signs out of InfluxDB for clinicians: latest reading, downsampled series, raw readings
(for FHIR: :class:`PatientReadings` pages them, :func:`reading_at` finds one by its timestamp).

Every reading is verified against the ledger before it is used (``vitalchain.storage.verified``):
only ``received``, ``sealed`` and ``anchored`` readings give values, a latest reading or an
average; ``altered`` and ``unknown`` ones are *withheld*: listed with their state and the reason,
never with their values.  Averages are therefore computed here, in Python, over the verified raw
points of the range, not by InfluxDB's ``GROUP BY time()``, which would average in whatever an
attacker wrote.

Every value a user chose reaches InfluxQL only as a bound parameter (``$patient``, ``$start``,
...); the only text formatted into queries is a LIMIT/OFFSET the server computes and placeholder
names it numbers (``$p0``, ``$p1``, ...).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vitalchain.errors import InvalidInput
from vitalchain.storage.influx import InfluxClient, quote_ident
from vitalchain.storage.ledger import Ledger, ReadingLocation
from vitalchain.storage.readings import READINGS_MEASUREMENT, VITAL_FIELDS, point_time_ns
from vitalchain.storage.verified import ReadState, ReadVerifier, VerifiedReading

MAX_POINTS = 500
# A vitals request verifies every raw reading of its range (docs/PERFORMANCE.md for the cost);
# past this many it is refused with a message rather than left to run for minutes.
MAX_VERIFIED_READINGS = 100_000
PAGE_ROWS = 5000
LATEST_PAGE_ROWS = 100
# The newest point is almost always servable: verifying a whole page of 100 for every patient
# made one GET /clinician/patients of 20 patients take 0.67 s (bench_pipeline), a clinician's
# whole latency budget.  Later pages are full size.
LATEST_FIRST_PAGE_ROWS = 5
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


class TooManyReadings(InvalidInput):
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


def _first_servable(verdicts: Sequence[VerifiedReading],
                    withheld: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The answer if ``verdicts`` (newest first) hold a servable reading; else the withheld
    ones are appended to ``withheld`` and None is returned."""
    for v in verdicts:
        if v.servable:
            return {"latest": v.served(), "withheld": withheld, "withheld_truncated": False}
        withheld.append(v.served())
    return None


async def latest_reading(influx: InfluxClient, verifier: ReadVerifier, patient_id: str,
                         first: Sequence[VerifiedReading] | None = None) -> dict[str, Any]:
    """The newest *servable* reading, and the altered/unknown ones newer than it (withheld).

    Looks at no more than ``LATEST_SCAN_ROWS`` newest points: if none of them is servable the
    answer says so (``latest`` None, ``withheld_truncated``) instead of scanning without end.
    ``first``: the verified first page (the ``LATEST_FIRST_PAGE_ROWS`` newest points), when the
    caller already fetched it (:func:`latest_readings`); paging goes on after it.
    """
    where, params = _where(patient_id, None, None)
    withheld: list[dict[str, Any]] = []
    offset = 0
    page = LATEST_FIRST_PAGE_ROWS
    if first is not None:
        found = _first_servable(first, withheld)
        if found is not None:
            return found
        if len(first) < page:
            return {"latest": None, "withheld": withheld, "withheld_truncated": False}
        offset, page = len(first), LATEST_PAGE_ROWS
    while offset < LATEST_SCAN_ROWS:
        rows = await influx.query(f"SELECT * FROM {_M} WHERE {where} ORDER BY time DESC "
                                  f"LIMIT {page} OFFSET {offset}", params)
        found = _first_servable(await _verified(verifier, rows), withheld)
        if found is not None:
            return found
        if len(rows) < page:
            return {"latest": None, "withheld": withheld, "withheld_truncated": False}
        offset += len(rows)
        page = LATEST_PAGE_ROWS
    return {"latest": None, "withheld": withheld, "withheld_truncated": True}


# Patients per batched query: the OR of their ids stays a short InfluxQL statement.
LATEST_BATCH_PATIENTS = 50


async def latest_readings(influx: InfluxClient, verifier: ReadVerifier,
                          patient_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`latest_reading` of many patients: one InfluxDB query and one verify per 50.

    The query returns each patient's ``LATEST_FIRST_PAGE_ROWS`` newest points (``GROUP BY
    "patient_id"``: InfluxQL applies ``ORDER BY time DESC LIMIT`` within each group, so each
    patient gets exactly the first page its own query would), and all of them are verified in
    one call (one ledger lookup, one thread hop).  A patient without a servable reading on a full
    first page goes on paging in :func:`latest_reading`: the answers are the same as calling it
    once per patient (tests/test_api_patients_batch.py).
    """
    out: dict[str, dict[str, Any]] = {}
    unique = list(dict.fromkeys(patient_ids))
    for start in range(0, len(unique), LATEST_BATCH_PATIENTS):
        chunk = unique[start:start + LATEST_BATCH_PATIENTS]
        names = {f"p{i}": p for i, p in enumerate(chunk)}
        who = " OR ".join(f"\"patient_id\" = ${n}" for n in names)
        rows = await influx.query(f"SELECT * FROM {_M} WHERE ({who}) GROUP BY \"patient_id\" "
                                  f"ORDER BY time DESC LIMIT {LATEST_FIRST_PAGE_ROWS}", names)
        pages: dict[str, list[dict[str, Any]]] = {p: [] for p in chunk}
        for row in rows:
            page = pages.get(str(row.get("patient_id")))
            if page is not None:  # always: the WHERE admits only these ids
                page.append(row)
        flat = [row for p in chunk for row in pages[p]]
        verdicts = await _verified(verifier, flat)
        at = 0
        for patient_id in chunk:
            n = len(pages[patient_id])
            out[patient_id] = await latest_reading(influx, verifier, patient_id,
                                                   first=verdicts[at:at + n])
            at += n
    return out


def newest_sealed_of(ledger: Ledger, devices: Iterable[str]) -> dict[str, ReadingLocation | None]:
    """The ledger's newest sealed reading of each device (run in one worker thread for a whole
    request, not one thread hop per device)."""
    return {device: ledger.newest_sealed(device) for device in devices}


async def missing_newer(influx: InfluxClient, ledger: Ledger, devices: Sequence[str],
                        latest: dict[str, Any] | None,
                        newest: Mapping[str, ReadingLocation | None] | None = None,
                        ) -> list[dict[str, Any]]:
    """Sealed readings newer than ``latest`` whose point is gone from InfluxDB (deleted).

    Verified reads withhold what is altered or unknown, but a *deleted* newest reading would
    just leave an older one as "latest".  For each of the patient's devices the ledger's newest
    sealed reading is looked up; if it is newer than ``latest`` and InfluxDB has no point for it,
    it is reported.  One indexed SQLite query per device (or ``newest``, from
    :func:`newest_sealed_of`, read beforehand), and one InfluxDB query only then.
    """
    out = []
    for device in devices:
        loc = (newest[device] if newest is not None and device in newest
               else await asyncio.to_thread(ledger.newest_sealed, device))
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
    received: int = 0
    total: dict[str, float] = field(default_factory=dict)
    low: dict[str, float] = field(default_factory=dict)
    high: dict[str, float] = field(default_factory=dict)

    def add(self, vitals: dict[str, Any], received: bool) -> None:
        self.n += 1
        self.received += received
        for name in VITAL_FIELDS:
            value = float(vitals[name])
            self.total[name] = self.total.get(name, 0.0) + value
            self.low[name] = min(self.low.get(name, value), value)
            self.high[name] = max(self.high.get(name, value), value)

    def point(self, ts_us: int) -> dict[str, Any]:
        out: dict[str, Any] = {"ts_us": ts_us, "n": self.n, "n_received": self.received}
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
                                                   v.state is ReadState.RECEIVED)
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


class PatientReadings:
    """One patient's raw readings for FHIR search, in keyset order: ``(time ns, device id)``, each
    verified against the ledger (withheld ones are served as ``entered-in-error``, without values).

    The FHIR search asks this object, and nothing else, for the readings it serves
    (:class:`vitalchain.api.fhirsearch.ReadingSource`).  InfluxDB orders only by time, so points
    sharing a timestamp (two devices of the patient) are fetched whole and ordered by device here;
    a page cut inside such a group is completed, never split, so no cursor can skip one.
    """

    def __init__(self, influx: InfluxClient, verifier: ReadVerifier, patient_id: str) -> None:
        self.influx = influx
        self.verifier = verifier
        self.patient_id = patient_id

    async def _rows(self, extra: str, params: dict[str, Any], tail: str = "") -> list[dict[str, Any]]:
        return await self.influx.query(
            f"SELECT * FROM {_M} WHERE \"patient_id\" = $patient AND {extra} {tail}",
            {"patient": self.patient_id, **params})

    async def page(self, lo_us: int, hi_us: int, start: tuple[int, str] | None, inclusive: bool,
                   descending: bool, limit: int) -> list[tuple[tuple[int, str], VerifiedReading]]:
        span = "time >= $lo AND time < $hi"
        params: dict[str, Any] = {"lo": lo_us * 1000, "hi": hi_us * 1000}
        rows: list[dict[str, Any]] = []
        if start is not None:
            t, device = start
            if lo_us * 1000 <= t < hi_us * 1000:
                ties = await self._rows("time = $t", {"t": t})
                rows += [r for r in ties if (r["device_id"] > device if not descending
                                             else r["device_id"] < device)
                         or (inclusive and r["device_id"] == device)]
            span += " AND time < $t" if descending else " AND time > $t"
            params["t"] = t
        order = "DESC" if descending else "ASC"
        main = await self._rows(span, params, f"ORDER BY time {order} LIMIT {int(limit)}")
        if len(main) == limit:  # complete the last timestamp group (see the class docstring)
            last = int(main[-1]["time"])
            main = [r for r in main if int(r["time"]) != last]
            main += await self._rows("time = $last", {"last": last})
        rows += main
        rows.sort(key=lambda r: (int(r["time"]), str(r["device_id"])), reverse=descending)
        verified = await _verified(self.verifier, rows)
        return [((int(r["time"]), str(r["device_id"])), v) for r, v in zip(rows, verified, strict=True)]

    async def count(self, lo_us: int, hi_us: int) -> int:
        rows = await self.influx.query(
            f"SELECT count(\"seq\") FROM {_M} WHERE \"patient_id\" = $patient "
            "AND time >= $lo AND time < $hi",
            {"patient": self.patient_id, "lo": lo_us * 1000, "hi": hi_us * 1000})
        return int(rows[0]["count"]) if rows else 0


async def reading_at(influx: InfluxClient, verifier: ReadVerifier, patient_ids: list[str], time_ns: int,
                     matches_device: Callable[[str], bool]) -> tuple[str, VerifiedReading] | None:
    """The reading stored at exactly ``time_ns`` for one of ``patient_ids`` whose device id
    satisfies ``matches_device`` (read by id: only the caller's granted patients are looked at),
    verified like every reading served, with the patient it is stored under."""
    if not patient_ids:
        return None
    names = {f"p{i}": p for i, p in enumerate(patient_ids)}
    who = " OR ".join(f"\"patient_id\" = ${n}" for n in names)
    rows = await influx.query(f"SELECT * FROM {_M} WHERE ({who}) AND time = $t",
                              {**names, "t": time_ns})
    for row in sorted(rows, key=lambda r: str(r["device_id"])):
        if matches_device(str(row["device_id"])):
            return str(row["patient_id"]), (await _verified(verifier, [row]))[0]
    return None
