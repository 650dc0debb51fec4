"""Builds a sealed, anchored state for the audit tests without Kafka or Faust.

Readings, windows and ledger entries are produced with the stream's own primitives
(``canonical_reading``, ``build_window_header``, ``Ledger.append_window``, the ``readings`` and
``windows`` point builders), and checkpoints are anchored by the real anchor worker on anvil.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.common_support import wait_until
from vitalchain.anchor.deploy import deploy
from vitalchain.anchor.worker import AnchorWorker
from vitalchain.config import Settings
from vitalchain.core.integrity import build_window_header, canonical_reading, reading_leaf_hash, salt_key_id
from vitalchain.storage.anchors import AnchorStore
from vitalchain.storage.influx import InfluxClient, Point
from vitalchain.storage.ledger import Ledger, ReadingIndexRow
from vitalchain.storage.readings import reading_point, window_point

SALT_KEY = b"\x11" * 32
T0 = 1_750_000_000_000_000  # epoch us of the first reading
DEVICES = ("dev-a", "dev-b", "dev-c")


@dataclass
class World:
    settings: Settings
    readings: list[dict[str, Any]] = field(default_factory=list)  # canonical, in seal order
    headers: list[dict[str, Any]] = field(default_factory=list)
    offset: int = 0
    seq: dict[str, int] = field(default_factory=dict)

    @property
    def end_us(self) -> int:
        return max(r["ts_us"] for r in self.readings)

    def reading(self, device: str, seq: int) -> dict[str, Any]:
        return next(r for r in self.readings if r["device_id"] == device and r["seq"] == seq)

    def header_of(self, device: str, seq: int) -> dict[str, Any]:
        return next(h for h in self.headers
                    if device in h["devices"] and h["devices"][device]["first_seq"] <= seq
                    <= h["devices"][device]["last_seq"])

    def seal(self, size: int, skip: Iterable[tuple[str, int]] = ()) -> None:
        """Seal one window of ``size`` readings round-robin over DEVICES, skipping given seqs."""
        self.begin_seal(size, skip)()

    def begin_seal(self, size: int, skip: Iterable[tuple[str, int]] = (),
                   received_us: int | None = None,
                   first_ts_us: int | None = None) -> Callable[[], None]:
        """The first half of a seal, in the stream's order: the readings points are written now
        (``received_us`` defaults to each reading's time); the returned function appends the
        window to the ledger, then writes its ``windows`` point (``ingest/sink.py``).
        ``first_ts_us`` overlaps the window in time with earlier ones (another partition would)."""
        skipped = set(skip)
        batch: list[dict[str, Any]] = []
        i = 0
        while len(batch) < size:
            device = DEVICES[i % len(DEVICES)]
            i += 1
            seq = self.seq.get(device, 0)
            self.seq[device] = seq + 1
            if (device, seq) in skipped:
                continue
            ts = (T0 + (self.offset + len(batch)) * 10_000 if first_ts_us is None
                  else first_ts_us + len(batch) * 10_000)
            raw = {"device_id": device, "patient_id": f"pat-{device}", "seq": seq, "ts_us": ts,
                   "vitals": {"hr": 60 + seq % 30, "spo2": 97, "rr": 14, "temp_c": 36.6,
                              "sys": 120, "dia": 80}}
            batch.append(canonical_reading(raw, SALT_KEY))
        leaves = [reading_leaf_hash(r) for r in batch]
        first, last = self.offset, self.offset + size - 1
        header = build_window_header(batch, partition=0, first_offset=first, last_offset=last,
                                     salt_key_id=salt_key_id(SALT_KEY), leaf_hashes=leaves)
        influx_write(self.settings, [
            reading_point(r, leaf, header["window_id"], False,
                          r["ts_us"] if received_us is None else received_us)
            for r, leaf in zip(batch, leaves, strict=True)])
        rows = [ReadingIndexRow(r["device_id"], r["seq"], r["ts_us"], i, leaf)
                for i, (r, leaf) in enumerate(zip(batch, leaves, strict=True))]
        self.offset = last + 1
        self.readings.extend(batch)
        self.headers.append(header)

        def finish() -> None:
            with Ledger(self.settings.ledger_path) as ledger:
                # On the raw topic, as the stream seals: the audit reads its positions to tell
                # a received reading of the open window from an insertion.
                index = ledger.append_window(self.settings.raw_topic, 0, header, leaves, rows,
                                             False)
            influx_write(self.settings, [window_point(header, index)])

        return finish

    def anchor(self) -> None:
        """Anchor the whole log with the real worker (one checkpoint per call)."""
        worker = AnchorWorker(self.settings)
        try:
            with Ledger(self.settings.ledger_path) as ledger:
                size = ledger.log_size()

            def anchored() -> bool:
                worker.tick()
                with AnchorStore(self.settings.ledger_path) as store:
                    cp = store.latest(self.settings.anchor_contract, "anchored")
                return cp is not None and cp.size == size

            wait_until(anchored, 30, f"checkpoint {size} anchored", interval=0.2)
        finally:
            worker.close()


def stored_leaf_field(row: dict[str, Any]) -> bytes | None:
    """The ``leaf`` field of a stored row as bytes, or None for a point without one (the stream
    writes none since D39): rewriting a point "as it was" keeps whichever shape it had."""
    return bytes.fromhex(row["leaf"]) if row.get("leaf") else None


def influx_write(settings: Settings, points: list[Point]) -> None:
    async def write() -> None:
        async with InfluxClient(settings) as client:
            await client.write(points)

    asyncio.run(write())


def influx_query(settings: Settings, q: str) -> list[dict[str, Any]]:
    async def query() -> list[dict[str, Any]]:
        async with InfluxClient(settings) as client:
            return await client.query(q)

    return asyncio.run(query())


def build_world(isolated: Settings, gap: tuple[str, int] | None = None) -> World:
    """Four windows of 9 readings in two anchored checkpoints (sizes 2 and 4)."""
    settings = isolated.with_overrides(anchor_every_windows=1, anchor_interval_seconds=0.0,
                                       anchor_confirmations=1)
    settings = settings.with_overrides(anchor_contract=deploy(settings, record=False).address)
    world = World(settings)
    world.seal(9)
    world.seal(9, skip=[gap] if gap else [])
    world.anchor()
    world.seal(9)
    world.seal(9)
    world.anchor()
    return world
