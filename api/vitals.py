"""Vital signs out of InfluxDB for clinicians: latest reading, downsampled series, raw readings.

Every value a user chose reaches InfluxQL only as a bound parameter (``$patient``, ``$start``,
...); the only text formatted into queries is the GROUP BY interval, which the server computes.
"""

from __future__ import annotations

import math
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


async def readings(influx: InfluxClient, patient_id: str, start_us: int | None,
                   end_us: int | None, limit: int) -> list[dict[str, Any]]:
    """Raw readings of a patient in time order (for FHIR), at most ``limit``."""
    where = ["\"patient_id\" = $patient"]
    params: dict[str, Any] = {"patient": patient_id}
    if start_us is not None:
        where.append("time >= $start")
        params["start"] = start_us * 1000
    if end_us is not None:
        where.append("time <= $end")
        params["end"] = end_us * 1000 + 999
    rows = await influx.query(f"SELECT * FROM {_M} WHERE {' AND '.join(where)} "
                              f"ORDER BY time LIMIT {int(limit)}", params)
    return [r for r in map(_reading, rows) if r is not None]
