"""The stream's per-partition state machine, independent of Faust so it can be driven directly.

The ledger is authoritative for positions.  Each partition's next expected offset is "one past
what is sealed or already in the open window"; a record *below* it was seen before (skipped), a
record *above* it means the consumer is positioned past unsealed data (Faust seeks to Kafka's
committed offset after a rebalance, and Kafka commits are only a hint), so we seek back to the
expected offset and ignore records until it arrives.  This keeps every reading exactly once no
matter what Kafka's committed offsets say.

Acks: a record is acked only when its whole window is sealed, and always in offset order, so the
offsets Faust commits never pass an unsealed record.  Records at or below the sealed offset are
acked at once (they are done).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from vitalchain.ingest.sink import Sealer, SealRefused
from vitalchain.ingest.windowing import ClosedWindow, PartitionWindower

from vitalchain.storage.ledger import Ledger

log = logging.getLogger("vitalchain.stream")

Ack = Callable[[], object]
Seek = Callable[[int, int], Awaitable[None]]
Earliest = Callable[[int], Awaitable[int]]
Highwater = Callable[[int], int | None]


@dataclass
class StreamStats:
    readings_in: int = 0
    kept: int = 0
    sealed_windows: int = 0
    sealed_readings: int = 0
    idle_cuts: int = 0
    duplicates: int = 0
    conflicts: int = 0
    invalid: int = 0
    late: int = 0
    skipped: int = 0
    out_of_position: int = 0
    resyncs: int = 0
    seal_retries: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (f"stream: in={self.readings_in} sealed_readings={self.sealed_readings} "
                f"windows={self.sealed_windows} (idle {self.idle_cuts}) "
                f"duplicates={self.duplicates} conflicts={self.conflicts} "
                f"invalid={self.invalid} late={self.late} skipped={self.skipped} "
                f"resyncs={self.resyncs} rate={self.sealed_readings / elapsed:.0f}/s")


@dataclass
class _Partition:
    windower: PartitionWindower
    acks: list[tuple[int, Ack]] = field(default_factory=list)
    last_arrival: float = field(default_factory=time.monotonic)
    seek_target: int | None = None


class StreamProcessor:
    """Feeds records to per-partition windowers and seals what they cut."""

    def __init__(self, topic: str, *, ledger: Ledger, sealer: Sealer, window_seconds: float,
                 idle_seal_seconds: float, salt_key: bytes, salt_key_id: str, seek: Seek,
                 earliest: Earliest, highwater: Highwater | None = None,
                 retry_delay_s: float = 0.5) -> None:
        self.topic = topic
        self.ledger = ledger
        self.sealer = sealer
        self.window_us = round(window_seconds * 1_000_000)
        self.idle_seal_seconds = idle_seal_seconds
        self._salt_key = salt_key
        self._salt_key_id = salt_key_id
        self._seek = seek
        self._earliest = earliest
        self._highwater = highwater or (lambda partition: None)
        self._retry_delay_s = retry_delay_s
        self._states: dict[int, _Partition] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self.stats = StreamStats()
        self.stopping = False

    def _lock(self, partition: int) -> asyncio.Lock:
        lock = self._locks.get(partition)
        if lock is None:
            lock = self._locks[partition] = asyncio.Lock()
        return lock

    async def _state(self, partition: int) -> _Partition:
        state = self._states.get(partition)
        if state is not None:
            return state
        sealed = self.ledger.last_sealed_offset(self.topic, partition)
        if sealed is None:
            # Nothing sealed yet: the partition starts at the log's first offset.
            sealed_floor = await self._earliest(partition) - 1
        else:
            sealed_floor = sealed
            await self.sealer.repair_window_point(self.topic, partition)
        windower = PartitionWindower(
            self.topic, partition, window_us=self.window_us, salt_key=self._salt_key,
            salt_key_id=self._salt_key_id, sealed_offset=sealed_floor,
            prev_end_us=self.ledger.previous_window_end_us(self.topic, partition),
            sealed_leaf=self.ledger.sealed_leaf)
        state = self._states[partition] = _Partition(windower)
        return state

    # --- records ------------------------------------------------------------------------------
    async def handle(self, partition: int, offset: int, key: bytes, value: bytes,
                     ack: Ack) -> None:
        async with self._lock(partition):
            state = await self._state(partition)
            windower = state.windower
            expected = windower.expected_offset
            if expected is not None and offset > expected:
                self.stats.out_of_position += 1
                if state.seek_target != expected:
                    log.info("partition %s: got offset %s, expected %s: seeking back",
                             partition, offset, expected)
                    state.seek_target = expected
                    await self._seek(partition, expected)
                return
            state.seek_target = None
            result = windower.offer(offset, value, key)
            if result.outcome == "already_done":
                self.stats.skipped += 1
                sealed = windower.sealed_offset
                if sealed is not None and offset <= sealed:
                    ack()
                return
            self.stats.readings_in += 1
            state.acks.append((offset, ack))
            state.last_arrival = time.monotonic()
            if result.outcome == "kept":
                self.stats.kept += 1
                self.stats.late += result.late
            elif result.outcome == "duplicate":
                self.stats.duplicates += 1
            elif result.outcome == "conflict":
                self.stats.conflicts += 1
            elif result.outcome == "invalid":
                self.stats.invalid += 1
            if result.closed is not None:
                await self._seal(partition, state, result.closed)

    async def idle_tick(self) -> None:
        """Seal open windows of partitions that received nothing for ``idle_seal_seconds``.

        Only when the partition is drained as far as the consumer knows (its high watermark is
        not beyond what we took): records that are merely delayed (a rebalance, a slow fetch)
        must not cause a wall-clock cut, which replay could not reproduce.
        """
        now = time.monotonic()
        for partition, state in list(self._states.items()):
            if not state.windower.has_open or now - state.last_arrival < self.idle_seal_seconds:
                continue
            highwater = self._highwater(partition)
            expected = state.windower.expected_offset
            if highwater is not None and expected is not None and highwater > expected:
                continue
            async with self._lock(partition):
                if self._states.get(partition) is not state or not state.windower.has_open:
                    continue
                closed = state.windower.cut_idle()
                if closed is not None:
                    await self._seal(partition, state, closed)

    async def revoke(self, partitions: set[int]) -> None:
        """Forget revoked partitions (waits for an in-flight seal, so it never races a new owner)."""
        for partition in partitions:
            async with self._lock(partition):
                self._states.pop(partition, None)

    # --- sealing ------------------------------------------------------------------------------
    async def _seal(self, partition: int, state: _Partition, closed: ClosedWindow) -> None:
        while True:
            try:
                result = await self.sealer.seal(closed)
                break
            except SealRefused as exc:
                log.warning("partition %s: %s; resyncing from the ledger", partition, exc)
                self.stats.resyncs += 1
                self._states.pop(partition, None)
                fresh = await self._state(partition)
                target = fresh.windower.expected_offset
                if target is not None:
                    fresh.seek_target = target
                    await self._seek(partition, target)
                return
            except Exception as exc:  # InfluxDB/Kafka trouble: keep the window, try again
                if self.stopping:
                    raise
                self.stats.seal_retries += 1
                log.warning("partition %s: sealing %s failed (%s: %s); retrying", partition,
                            closed.header["window_id"] if closed.header else "range",
                            type(exc).__name__, exc)
                await asyncio.sleep(self._retry_delay_s)
        state.windower.mark_sealed(closed)
        done = [a for a in state.acks if a[0] <= closed.last_offset]
        state.acks = [a for a in state.acks if a[0] > closed.last_offset]
        for _, ack in done:  # in offset order, so commits never pass an unsealed record
            ack()
        if result.log_index is not None:
            self.stats.sealed_windows += 1
            self.stats.sealed_readings += result.readings
            self.stats.idle_cuts += closed.idle_cut
