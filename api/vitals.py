"""Vital signs out of InfluxDB for clinicians: latest reading, downsampled series, raw readings
(for FHIR: :class:`PatientReadings` pages them, :func:`reading_at` finds one by its timestamp).

Every value a user chose reaches InfluxQL only as a bound parameter (``$patient``, ``$start``,
...); the only text formatted into queries is the GROUP BY interval and LIMITs, which the server
computes, and placeholder names it numbers (``$p0``, ``$p1``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from vitalchain.storage.influx import InfluxClient, quote_ident
from vitalchain.storage.readings import (
    READINGS_MEASUREMENT,
    VITAL_FIELDS,
    StoredReadingError,
    reading_from_row,
    ts_us_from_time_ns,
)

MAX_POINTS = 500
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


def _reading(row: dict[str, Any]) -> dict[str, Any] | None:
    try:
        stored = reading_from_row(row)
    except StoredReadingError:
        return None
    c = stored.canonical
    return {"device_id": c["device_id"], "patient_id": c["patient_id"], "seq": c["seq"],
            "ts_us": c["ts_us"], "vitals": c["vitals"], "late": stored.late,
            "window_id": stored.window_id}


async def latest_reading(influx: InfluxClient, patient_id: str) -> dict[str, Any] | None:
    rows = await influx.query(f"SELECT * FROM {_M} WHERE \"patient_id\" = $patient "
                              "ORDER BY time DESC LIMIT 1", {"patient": patient_id})
    return _reading(rows[0]) if rows else None


async def downsampled(influx: InfluxClient, patient_id: str, start_us: int, end_us: int,
                      max_points: int = MAX_POINTS) -> dict[str, Any]:
    """Per-interval mean/min/max of each vital, plus the readings flagged late in the range."""
    interval = choose_interval_s(start_us, end_us, max_points)
    aggregates = ", ".join(f"mean({quote_ident(v)}) AS {quote_ident(v)}, "
                           f"min({quote_ident(v)}) AS {quote_ident(v + '_min')}, "
                           f"max({quote_ident(v)}) AS {quote_ident(v + '_max')}"
                           for v in VITAL_FIELDS)
    where = "\"patient_id\" = $patient AND time >= $start AND time <= $end"
    params = {"patient": patient_id, "start": start_us * 1000, "end": end_us * 1000 + 999}
    rows = await influx.query(
        f"SELECT {aggregates}, count(\"seq\") AS \"n\" FROM {_M} WHERE {where} "
        f"GROUP BY time({interval}s) fill(none)", params, epoch="u")
    points = [{"ts_us": int(r["time"]), "n": int(r["n"]),
               **{k: r[k] for k in r if k not in ("time", "n")}} for r in rows]
    late_rows = await influx.query(
        f"SELECT \"seq\", \"device_id\", \"window_id\" FROM {_M} WHERE {where} AND \"late\" = true "
        "ORDER BY time LIMIT 1000", params)
    late = [{"device_id": r["device_id"], "seq": int(r["seq"]),
             "ts_us": ts_us_from_time_ns(int(r["time"]), int(r["seq"])), "window_id": r["window_id"]}
            for r in late_rows]
    return {"interval_s": interval, "points": points, "late": late}


class PatientReadings:
    """One patient's raw readings for FHIR search, in keyset order: ``(time ns, device id)``.

    The FHIR search asks this object, and nothing else, for the readings it serves
    (:class:`vitalchain.api.fhirsearch.ReadingSource`).  InfluxDB orders only by time, so points
    sharing a timestamp (two devices of the patient) are fetched whole and ordered by device here;
    a page cut inside such a group is completed, never split, so no cursor can skip one.
    """

    def __init__(self, influx: InfluxClient, patient_id: str) -> None:
        self.influx = influx
        self.patient_id = patient_id

    async def _rows(self, extra: str, params: dict[str, Any], tail: str = "") -> list[dict[str, Any]]:
        return await self.influx.query(
            f"SELECT * FROM {_M} WHERE \"patient_id\" = $patient AND {extra} {tail}",
            {"patient": self.patient_id, **params})

    async def page(self, lo_us: int, hi_us: int, start: tuple[int, str] | None, inclusive: bool,
                   descending: bool, limit: int) -> list[tuple[tuple[int, str], dict[str, Any] | None]]:
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
        return [((int(r["time"]), str(r["device_id"])), _reading(r)) for r in rows]

    async def count(self, lo_us: int, hi_us: int) -> int:
        rows = await self.influx.query(
            f"SELECT count(\"seq\") FROM {_M} WHERE \"patient_id\" = $patient "
            "AND time >= $lo AND time < $hi",
            {"patient": self.patient_id, "lo": lo_us * 1000, "hi": hi_us * 1000})
        return int(rows[0]["count"]) if rows else 0


async def reading_at(influx: InfluxClient, patient_ids: list[str], time_ns: int,
                     matches_device: Callable[[str], bool]) -> dict[str, Any] | None:
    """The reading stored at exactly ``time_ns`` for one of ``patient_ids`` whose device id
    satisfies ``matches_device`` (read by id: only the caller's granted patients are looked at)."""
    if not patient_ids:
        return None
    names = {f"p{i}": p for i, p in enumerate(patient_ids)}
    who = " OR ".join(f"\"patient_id\" = ${n}" for n in names)
    rows = await influx.query(f"SELECT * FROM {_M} WHERE ({who}) AND time = $t",
                              {**names, "t": time_ns})
    for row in sorted(rows, key=lambda r: str(r["device_id"])):
        if matches_device(str(row["device_id"])):
            return _reading(row)
    return None
