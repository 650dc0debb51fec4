"""Readings written to InfluxDB on receipt, before their window seals (issue #14, item 3).

A clinician must not wait for a window to close to see a vital sign, so every kept reading's
``readings`` point is written as soon as the stream takes it, batched:
:meth:`ReceiptWriter.add_many` only queues the points, and a background flush writes what is
queued every ``flush_s`` (or at once when ``max_batch`` points are waiting).  Such a point is
*received*: the API shows it as not yet verified until the ledger holds its leaf
(``vitalchain.storage.verified``).

Sealing stays exact because the receipt point is the very point sealing used to write: the same
measurement, tags and timestamp (so a replay after a crash overwrites it instead of doubling it)
and the same fields, ``window_id`` included (a reading is offered into the open window it is
sealed in).  Before the ledger names a window's readings, :meth:`ReceiptWriter.settle` flushes
the queue and returns the readings that were *not* written with that window id (a replay that
cut a window differently, a reading never offered through this writer); the sealer writes those
itself.  So "InfluxDB before the ledger" holds as before, and each reading is written once in
the common case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vitalchain.ingest.windowing import WindowReading
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.readings import reading_lines, signed_at, signed_message_line

log = logging.getLogger("vitalchain.stream")

# Fast enough for "on screen within a second" (the dashboard polls every second), slow enough
# that a busy stream writes hundreds of points per request rather than a few. The
# stream takes it from VITALCHAIN_RECEIPT_FLUSH_SECONDS (the same default, vitalchain.config).
FLUSH_S = 0.1
MAX_BATCH = 5000


@dataclass
class ReceiptStats:
    written: int = 0
    flushes: int = 0
    failures: int = 0


def percentile_ms(ages_us: list[int], fraction: float) -> float:
    """The ``fraction`` percentile of ``ages_us`` (nearest rank, not empty), in ms."""
    ages_us.sort()
    return ages_us[min(len(ages_us) - 1, int(fraction * len(ages_us)))] / 1000


class ReadingAges:
    """How old readings are, since the bridge stamped them (``received_us``), when the stream
    takes them and when they are in InfluxDB: the two stages of a reading's way to the screen
    that happen after the bridge, for the progress line (as far as the bridge's and the
    worker's clocks agree). Collected per progress period and reset when read."""

    def __init__(self) -> None:
        self.taken_us: list[int] = []  # one per record: its first reading's age
        self.written_us: list[int] = []  # one per reading written

    def line(self) -> str:
        """``age_taken_ms=p50/p99 age_written_ms=p50/p99`` since the last call (``-`` for a
        stage no reading passed)."""
        taken, written = self.taken_us, self.written_us
        self.taken_us, self.written_us = [], []
        return f"age_taken_ms={_p50_p99(taken)} age_written_ms={_p50_p99(written)}"


def _p50_p99(ages_us: list[int]) -> str:
    if not ages_us:
        return "-"
    return f"{percentile_ms(ages_us, 0.5):.0f}/{percentile_ms(ages_us, 0.99):.0f}"


def by_message(readings: Iterable[WindowReading]) -> dict[tuple[str, Any], list[Any]]:
    """The canonical readings of each signed message among ``readings``, in order, keyed by
    ``(device_id, at)``: what :func:`signed_message_line` needs to leave the readings' JSON out
    of the message's point when they rebuild it exactly (D45)."""
    groups: dict[tuple[str, Any], list[Any]] = {}
    for reading in readings:
        signed = reading.signed
        if signed is not None:
            c = reading.canonical
            key = (c["device_id"], tuple(signed["at"]))
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            group.append(c)
    return groups


def batch_lines(batch: list[tuple[tuple[str, int] | None, str, Any]]) -> list[str]:
    """Line protocol of a queued batch, in queue order (a signed message's point ahead of the
    reading that names it); the readings formatted by one ``reading_lines`` call."""
    formatted = iter(reading_lines([item for key, _, item in batch if key is not None]))
    return [next(formatted) if key is not None else item for key, _, item in batch]


class ReceiptWriter:
    """Queues receipt points and writes them in batches; remembers what it wrote until sealed."""

    def __init__(self, influx: InfluxClient, flush_s: float = FLUSH_S,
                 max_batch: int = MAX_BATCH) -> None:
        self.influx = influx
        self.flush_s = flush_s
        self.max_batch = max_batch
        # (reading key, window id, its row for reading_lines), or (None, window id, the signed
        # message's line): rows are formatted in bulk at flush (one template, no Point each).
        self._queue: list[tuple[tuple[str, int] | None, str, Any]] = []
        # (device_id, seq) -> window_id it was written with; dropped when its window seals.
        self._written: dict[tuple[str, int], str] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stats = ReceiptStats()
        self.ages = ReadingAges()

    @property
    def queued(self) -> int:
        """Points taken but not written yet (on the progress line: they hold readings back)."""
        return sum(1 for key, _, _ in self._queue if key is not None)

    def add_many(self, readings: Iterable[WindowReading], window_id: str) -> None:
        """Queue the points of a record's kept readings, all in open window ``window_id`` (one
        call per record, not per reading: the stream takes ~10-50 readings per record)."""
        queue = self._queue
        readings = list(readings)
        if readings:
            self.ages.taken_us.append(time.time_ns() // 1000 - readings[0].received_us)
        messages: dict[tuple[str, Any], list[Any]] | None = None
        for reading in readings:
            c = reading.canonical
            signed = reading.signed
            if signed is not None and "sig" in signed:
                # The message's point goes in the same batch, ahead of the reading naming it;
                # without the readings' JSON when this record's kept readings rebuild it (D45).
                if messages is None:
                    messages = by_message(readings)
                kept = messages[(c["device_id"], tuple(signed["at"]))]
                queue.append((None, window_id, signed_message_line(c["device_id"], signed,
                                                                   kept)))
            queue.append(((c["device_id"], c["seq"]), window_id,
                          (c, reading.leaf, window_id, reading.late, reading.received_us,
                           signed_at(signed) if signed is not None else None)))
        if len(queue) >= self.max_batch:
            self._wake.set()
        self._ensure_task()

    async def flush(self) -> None:
        """Write everything queued; raises (keeping the queue) if InfluxDB refuses or is down."""
        async with self._lock:
            if not self._queue:
                return
            batch = self._queue
            self._queue = []
            try:
                await self.influx.write(batch_lines(batch))
            except BaseException:
                self._queue = batch + self._queue  # in order: a later point for a key wins
                self.stats.failures += 1
                raise
            readings = 0
            now_us = time.time_ns() // 1000
            ages = self.ages.written_us
            for key, window_id, item in batch:
                if key is not None:
                    self._written[key] = window_id
                    ages.append(now_us - item[4])  # the row's received_us
                    readings += 1
            self.stats.written += readings
            self.stats.flushes += 1

    async def settle(self, window_id: str, readings: Iterable[WindowReading]) -> list[WindowReading]:
        """Flush, then return the readings of ``window_id`` not written with that window id.

        Called by the sealer right before the ledger append; forgets the window's readings.
        """
        await self.flush()
        missing = []
        for r in readings:
            key = (r.canonical["device_id"], r.canonical["seq"])
            if self._written.pop(key, None) != window_id:
                missing.append(r)
        return missing

    def forget(self, keys: Iterable[tuple[str, int]]) -> None:
        for key in keys:
            self._written.pop(key, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="receipt-writer")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        while True:
            # The interval counts from the last flush's start, not its end: a POST that takes
            # 30 ms under load would otherwise add 30 ms to every reading's wait for the screen.
            # A POST longer than the interval is followed at once by the next (what queued
            # meanwhile), so batches grow with the load instead of the delay.
            wait = self.flush_s - (loop.time() - began)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            began = loop.time()
            try:
                await self.flush()
            except Exception as exc:  # InfluxDB trouble: kept queued; the seal retries too
                log.warning("writing %s received readings to InfluxDB failed (%s: %s); "
                            "retrying", self.queued, type(exc).__name__, exc)
                await asyncio.sleep(self.flush_s)
