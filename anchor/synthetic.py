"""Synthetic sealed windows, for the anchor tests and the benchmark.

Seals windows exactly as the stream does (canonical readings with salts, window header, ledger
append, ``readings`` points through :mod:`vitalchain.storage.readings`), minus Kafka and MQTT, so the anchor
worker and proof service can be exercised at any rate without the rest of the pipeline.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vitalchain.config import Settings
from vitalchain.core.integrity import (
    build_window_header,
    canonical_reading,
    reading_leaf_hash,
    salt_key_id,
)
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger, ReadingIndexRow
from vitalchain.storage.readings import reading_point

TOPIC = "vitals.synthetic"


@dataclass
class SyntheticSealer:
    """Appends windows of fake readings to a ledger (and optionally InfluxDB)."""

    ledger: Ledger
    salt_key: bytes = b"\x07" * 32
    partition: int = 0
    devices: int = 4
    seed: int = 1
    start_us: int = 1_700_000_000_000_000
    _offset: int = 0
    _seq: dict[str, int] = field(default_factory=dict)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        last = self.ledger.last_sealed_offset(TOPIC, self.partition)
        self._offset = 0 if last is None else last + 1

    def _reading(self, device: str, ts_us: int) -> dict[str, Any]:
        seq = self._seq.get(device, 0)
        self._seq[device] = seq + 1
        r = self._rng
        return {"device_id": device, "patient_id": f"pat-{device}", "seq": seq, "ts_us": ts_us,
                "vitals": {"hr": r.randint(50, 120), "spo2": r.randint(90, 100),
                           "rr": r.randint(10, 25), "temp_c": round(r.uniform(36, 39), 1),
                           "sys": r.randint(100, 150), "dia": r.randint(60, 95)}}

    def seal(self, size: int) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
        """Seal one window of ``size`` readings; returns (log index, canonical readings, header)."""
        readings = []
        for i in range(size):
            device = f"dev-{self.seed}-{i % self.devices}"
            ts = self.start_us + (self._offset + i) * 1000
            readings.append(canonical_reading(self._reading(device, ts), self.salt_key))
        leaves = [reading_leaf_hash(r) for r in readings]
        first, last = self._offset, self._offset + size - 1
        header = build_window_header(readings, partition=self.partition, first_offset=first,
                                     last_offset=last, salt_key_id=salt_key_id(self.salt_key),
                                     leaf_hashes=leaves)
        rows = [ReadingIndexRow(r["device_id"], r["seq"], r["ts_us"], i, leaf)
                for i, (r, leaf) in enumerate(zip(readings, leaves, strict=True))]
        index = self.ledger.append_window(TOPIC, self.partition, header, leaves, rows, False)
        self._offset = last + 1
        return index, readings, header


def write_readings(settings: Settings, windows: Sequence[tuple[list[dict[str, Any]],
                                                                 dict[str, Any]]]) -> int:
    """Store the windows' readings in InfluxDB as the stream's sink does."""
    points = []
    for readings, header in windows:
        for r in readings:
            leaf = reading_leaf_hash(r)
            points.append(reading_point(r, leaf, header["window_id"], False, r["ts_us"]))

    async def write() -> int:
        async with InfluxClient(settings) as client:
            return await client.write(points)

    return asyncio.run(write())
