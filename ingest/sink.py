"""Sealing one cut window: InfluxDB first, then the ledger, then (by the caller) the Kafka ack.

Order matters.  Readings go to InfluxDB before the ledger names them (normally already on receipt,
by :class:`~vitalchain.ingest.receipts.ReceiptWriter`, which the sealer flushes first), so the ledger never points
at readings that are not stored; a crash between the two leaves points that the replay rewrites
identically (same measurement, tags and timestamp).  The ``windows`` point carries the ledger's
log index, so it is written right after the append; if the process dies in between, the point is
restored by :meth:`Sealer.repair_window_point` when the partition is next assigned (only a
partition's *last* window can be missing its point, since a partition seals one window at a time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from vitalchain.errors import Refused
from vitalchain.ingest.receipts import ReceiptWriter, by_message
from vitalchain.ingest.windowing import ClosedWindow, DeadLetter, WindowReading
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger, ReadingIndexRow, StaleWindow, WindowConflict
from vitalchain.storage.readings import (
    reading_lines,
    signed_at,
    signed_message_line,
    window_point,
)

DeadLetterSend = Callable[[DeadLetter], Awaitable[None]]


class SealRefused(Refused):
    """The ledger refused the window (another worker sealed this range): resync from the ledger."""


@dataclass(frozen=True, slots=True)
class SealResult:
    log_index: int | None  # None for a range without readings (offsets marked done only)
    readings: int


class LedgerAppender:
    """Appends windows to the ledger on a thread of its own, through a connection of its own.

    Why: an append (the window's row, its reading index in key order, each device's newest
    sealed reading, SQLite's fsync) took ~50 ms for a window of ~2,700 readings, and made on the
    worker's event loop it stopped everything else there: taking records, writing them to
    InfluxDB as received, the other partitions' seals (D55).  On this thread the loop goes on;
    SQLite's fsync and most of the insert release the GIL.  A connection of its own, because
    the worker's connection serves the loop's reads meanwhile (SQLite's WAL lets them read the
    last committed state while the append writes; PostgreSQL's connections are independent).
    One thread: the ledger takes one writer at a time anyway, and a partition's windows reach
    it one at a time and in order (the processor seals a partition's windows one by one)."""

    def __init__(self, target: str | Path) -> None:
        self._ledger = Ledger(target)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ledger-append")

    async def append_window(self, topic: str, partition: int, header: Mapping[str, Any],
                            leaf_hashes: Sequence[bytes], readings: Sequence[ReadingIndexRow],
                            idle_cut: bool, tail_hash: bytes | None = None) -> int:
        """:meth:`Ledger.append_window` on the appender's thread (same result, same errors)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, partial(self._ledger.append_window, topic, partition, header,
                                  leaf_hashes, readings, idle_cut, tail_hash))

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._ledger.close()


class Sealer:
    def __init__(self, ledger: Ledger, influx: InfluxClient, send_dead_letter: DeadLetterSend,
                 receipts: ReceiptWriter | None = None, appender: LedgerAppender | None = None):
        self.ledger = ledger
        self.influx = influx
        self.send_dead_letter = send_dead_letter
        # None: readings are written at seal only (tests that drive the sealer alone).
        self.receipts = receipts
        # None: windows are appended through ``ledger`` on the caller's loop (tests, tools).
        self.appender = appender

    async def _append_window(self, *args: Any) -> int:
        if self.appender is not None:
            return await self.appender.append_window(*args)
        return self.ledger.append_window(*args)

    def received_many(self, readings: Iterable[WindowReading], window_id: str) -> None:
        """A record's readings were kept in open window ``window_id``: queue their points."""
        if self.receipts is not None:
            self.receipts.add_many(readings, window_id)

    def _forget(self, closed: ClosedWindow) -> None:
        if self.receipts is not None:
            self.receipts.forget((r.canonical["device_id"], r.canonical["seq"])
                                 for r in closed.readings)

    async def seal(self, closed: ClosedWindow) -> SealResult:
        """Make ``closed`` durable; raises :class:`SealRefused` if the ledger fences it off."""
        position = self.ledger.position(closed.topic, closed.partition)
        if position.epoch != closed.epoch:
            existing = (self.ledger.window_by_id(closed.header["window_id"])
                        if closed.header else None)
            if existing and existing.header == closed.header:
                self._forget(closed)
                return SealResult(existing.log_index, 0)
            raise SealRefused(f"{closed.topic}[{closed.partition}] is in epoch {position.epoch}; "
                              f"a window of epoch {closed.epoch} is stale")
        sealed = position.sealed_offset
        if sealed is not None and sealed >= closed.last_offset:
            existing = (self.ledger.window_by_id(closed.header["window_id"])
                        if closed.header else None)
            if closed.header is None or (existing and existing.header == closed.header):
                self._forget(closed)
                return SealResult(existing.log_index if existing else None, 0)
        if sealed is not None and closed.first_offset != sealed + 1:
            raise SealRefused(f"{closed.topic}[{closed.partition}] is sealed up to {sealed}; "
                              f"window starting at {closed.first_offset} is stale")
        # Dead letters first: once the range is sealed its records are never read again.
        for letter in closed.dead_letters:
            await self.send_dead_letter(letter)
        if closed.header is None:
            try:
                self.ledger.advance_offset(closed.topic, closed.partition, closed.first_offset,
                                           closed.last_offset, closed.epoch, closed.tail_hash)
            except StaleWindow as exc:
                raise SealRefused(str(exc)) from exc
            return SealResult(None, 0)
        header = closed.header
        window_id = header["window_id"]
        unwritten = (list(closed.readings) if self.receipts is None
                     else await self.receipts.settle(window_id, closed.readings))
        if unwritten:
            # Signed messages first (the record carrying one whole), so no stored reading names a
            # message point that is missing; rewriting one is idempotent like the readings.
            messages = by_message(unwritten)
            await self.influx.write(
                [signed_message_line(r.canonical["device_id"], r.signed,
                                     messages[(r.canonical["device_id"], tuple(r.signed["at"]))])
                 for r in unwritten if r.signed is not None and "sig" in r.signed]
                + reading_lines([(r.canonical, r.leaf, window_id, r.late, r.received_us,
                                  signed_at(r.signed) if r.signed is not None else None)
                                 for r in unwritten]))
        rows = [ReadingIndexRow(r.canonical["device_id"], r.canonical["seq"],
                                r.canonical["ts_us"], i, r.leaf)
                for i, r in enumerate(closed.readings)]
        try:
            index = await self._append_window(closed.topic, closed.partition, header,
                                              closed.leaf_hashes, rows, closed.idle_cut,
                                              closed.tail_hash)
        except (StaleWindow, WindowConflict) as exc:
            # Our readings points may have overwritten the winner's window_id fields; the
            # winner's window point is restored here, the readings when the range is replayed.
            await self.repair_window_point(closed.topic, closed.partition)
            raise SealRefused(str(exc)) from exc
        await self.influx.write([window_point(header, index)])
        return SealResult(index, len(closed.readings))

    async def repair_window_point(self, topic: str, partition: int) -> None:
        """Rewrite the ``windows`` point of the partition's last sealed window (idempotent)."""
        last = self.ledger.last_window(topic, partition)
        if last is not None:
            await self.influx.write([window_point(last.header, last.log_index)])
