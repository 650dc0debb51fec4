"""Rejected readings out of InfluxDB measurement ``rejected`` (written by ``vitalchain deadletters``).

A reject carries the device id (when the bridge could tell it) but no patient id: the device may
not even have sent valid JSON. Which patient a reject concerns is therefore decided here, at query
time, from the device registry, so a clinician sees exactly the rejects of their patients' devices.
User values reach InfluxQL only as bound parameters (``$d0``, ``$start``, ...).
"""

from __future__ import annotations

from typing import Any

from vitalchain.core.timeutil import iso_from_us
from vitalchain.ingest.deadletters import REJECTED_MEASUREMENT
from vitalchain.storage.influx import InfluxClient, quote_ident

MAX_DEVICES = 200  # devices of one patient looked up per query
_M = quote_ident(REJECTED_MEASUREMENT)
_FIELDS = ("detail", "payload_b64", "payload_size", "payload_truncated", "topic")


def _row(row: dict[str, Any]) -> dict[str, Any]:
    received_us = int(row.get("received_us") or int(row["time"]) // 1000)
    return {"device_id": row.get("device_id"), "reason": row.get("reason"), "stage": row.get("stage"),
            **{k: row.get(k) for k in _FIELDS},
            "received_us": received_us, "received": iso_from_us(received_us)}


async def rejected(influx: InfluxClient, start_us: int, end_us: int, limit: int,
                   devices: list[str] | None = None, reason: str | None = None) -> list[dict[str, Any]]:
    """Rejects in ``[start_us, end_us]``, newest first; ``devices=[]`` matches nothing."""
    where = ["time >= $start", "time <= $end"]
    params: dict[str, Any] = {"start": start_us * 1000, "end": end_us * 1000 + 999}
    if devices is not None:
        if not devices:
            return []
        chosen = devices[:MAX_DEVICES]
        where.append("(" + " OR ".join(f"\"device_id\" = $d{i}" for i in range(len(chosen))) + ")")
        params.update({f"d{i}": d for i, d in enumerate(chosen)})
    if reason is not None:
        where.append("\"reason\" = $reason")
        params["reason"] = reason
    rows = await influx.query(f"SELECT * FROM {_M} WHERE {' AND '.join(where)} "
                              f"ORDER BY time DESC LIMIT {int(limit)}", params)
    return [_row(r) for r in rows]
