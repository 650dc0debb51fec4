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

Epochs (docs/STREAM.md): a sealed offset means "done" only in the incarnation of the partition it
was read from.  So before skipping anything below what the ledger says is sealed, the processor
checks that the partition is still that incarnation: when it takes a partition with a sealed
offset S (on the first tick after the assignment, record or not) it seeks to S and compares the
record there with the ledger's *tail* hash (with nothing sealed in the epoch, the record at the
epoch's noted start: the first record taken in an epoch is noted before anything of it is
stored, D56); whenever the partition's log end (high watermark) falls below one seen before it
checks that record again; and when the log end is at or below what it has done, offsets went
backwards.  Either finding starts a new epoch in the ledger
(compare-and-set: the ledger is the arbiter among workers) and the partition is read again from
its first offset.  An open window of the old incarnation is sealed first (its records were read
and can still be kept); whatever the old Kafka held beyond that is gone, and the audit reports
the readings it lacks as lost in a Kafka restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from vitalchain.ingest.sink import Sealer, SealRefused, SealResult
from vitalchain.ingest.windowing import ClosedWindow, PartitionWindower, record_hash
from vitalchain.storage.ledger import Ledger, PartitionPosition

log = logging.getLogger("vitalchain.stream")

Ack = Callable[[], object]
Seek = Callable[[int, int], Awaitable[None]]
Earliest = Callable[[int], Awaitable[int]]
Highwater = Callable[[int], int | None]
# When the consumer last handed a record of the partition over to the agent's buffer (monotonic
# seconds), or None if never: records on their way, not yet handled.
Fetched = Callable[[int], float | None]
# The consumer's fetch position for the partition (the next offset Kafka hands it), or None.
Position = Callable[[int], int | None]

# A log end at or below what is done must persist this long before it counts: the consumer's
# high watermark comes from its last fetch, which may predate records another worker has sealed
# since; fetches (every fetch_max_wait, 0.5 s) refresh it well within this time.
BACKWARDS_CONFIRM_S = 2.0
# A seek (to the sealed offset while checking an incarnation, or back to the expected offset) is
# repeated this often while the record sought does not come (a rebalance's seek may undo ours).
RESEEK_S = 1.0
# A partition whose log end is past the next offset we expect, but from which no record came for
# this long, has a consumer sitting elsewhere: after a broker restart Faust seeks (on a later
# rebalance or its recovery) to a committed offset of the *old* incarnation, past the new log's
# end, where nothing arrives until the new log grows that far. Measured before this rule: 40 to
# 90 s without a record after a tansu restart, and the readings of that time were lost with the
# next restart. The stream seeks back to the expected offset. "No record" means none handled by
# the processor *and* none handed over by the consumer (``fetched``): under load the agent's
# buffer holds records for longer than this (a loaded worker at 2,000 devices x 5 Hz counted 16
# stalls in 4 minutes, each seek making the consumer fetch again what was already in the buffer:
# 1,429 records skipped), and a partition whose records are on their way is not stalled.
STALL_S = 2.0
# A consumer whose fetch position is past the expected offset but not past Kafka's log end has
# taken the records in between from Kafka (they are in Faust's buffers, on their way): a stall
# only if nothing comes for this long (a safety net for a seek that left it exactly at the end).
IN_FLIGHT_STALL_S = 10 * STALL_S
# Kafka offsets need not be contiguous, and tansu leaves holes after a restart (its log shows
# "AlreadyExists" for a batch when produce requests race; measured in a soak: a partition sought
# back to offset 3 got offset 4 first, every time, for minutes). A record the processor seeks
# back to that has not come after this many seeks, while later ones did, is taken as a hole: the
# lowest later offset seen is taken next (the window's offset range spans the hole).
HOLE_SEEKS = 3


@dataclass
class StreamStats:
    records_in: int = 0  # Kafka records taken (one per MQTT message since record version 2)
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
    stalls: int = 0
    holes: int = 0
    resyncs: int = 0
    seal_retries: int = 0
    epochs: int = 0
    salvaged: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (f"stream: in={self.readings_in} records={self.records_in} "
                f"sealed_readings={self.sealed_readings} "
                f"windows={self.sealed_windows} (idle {self.idle_cuts}) "
                f"duplicates={self.duplicates} conflicts={self.conflicts} "
                f"invalid={self.invalid} late={self.late} skipped={self.skipped} "
                f"resyncs={self.resyncs} epochs={self.epochs} salvaged={self.salvaged} "
                f"stalls={self.stalls} holes={self.holes} "
                f"rate={self.sealed_readings / elapsed:.0f}/s")


class IncarnationCheck(NamedTuple):
    """A record whose hash the ledger holds: the one at the sealed offset (its tail), or, with
    nothing sealed in the epoch, the one at the epoch's noted start (D56)."""

    offset: int
    record_hash: bytes | None  # None: a range sealed before tails were recorded
    at_start: bool

    @staticmethod
    def what_of(at_start: bool) -> str:
        return "the epoch's noted start" if at_start else "sealed offset"

    @property
    def what(self) -> str:
        return self.what_of(self.at_start)


@dataclass
class _Partition:
    windower: PartitionWindower
    epoch: int = 0
    acks: list[tuple[int, Ack]] = field(default_factory=list)
    last_arrival: float = field(default_factory=time.monotonic)
    seek_target: int | None = None
    # When the consumer last handed over any record of this partition (skipped ones included).
    last_record: float = field(default_factory=time.monotonic)
    stuck_said: float = 0.0  # when a still-stalled partition was last logged
    # A record sought back to and not arriving: its offset, the seeks made, the lowest later
    # offset seen meanwhile (see HOLE_SEEKS).
    hole_at: int | None = None
    hole_seeks: int = 0
    hole_next: int = 0
    # Incarnation check pending: the sealed offset whose record must match the ledger's tail,
    # or (``verify_start``) with nothing sealed in the epoch, the offset of its noted start.
    verify_offset: int | None = None
    verify_hash: bytes | None = None
    verify_start: bool = False
    # Nothing sealed and no start noted in the epoch: the first record taken is noted first.
    note_start: bool = False
    verify_earliest_checked: bool = False
    seeked_at: float = 0.0
    backwards_since: float | None = None
    # Highest log end seen in this epoch: what the old Kafka held, if the epoch has to end.
    end_seen: int | None = None
    # The window cut by a record, sealing while the partition's next records are taken (see
    # StreamProcessor._seal_in_background); what became of it, for the partition's lock holder.
    sealing: asyncio.Task[None] | None = None
    refused: bool = False
    failed: BaseException | None = None


class StreamProcessor:
    """Feeds records to per-partition windowers and seals what they cut."""

    def __init__(self, topic: str, *, ledger: Ledger, sealer: Sealer, window_seconds: float,
                 idle_seal_seconds: float, salt_key: bytes, salt_key_id: str, seek: Seek,
                 earliest: Earliest, highwater: Highwater | None = None,
                 retry_delay_s: float = 0.5, fetched: Fetched | None = None,
                 position: Position | None = None) -> None:
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
        self._fetched = fetched or (lambda partition: None)
        self._position = position or (lambda partition: None)
        self._retry_delay_s = retry_delay_s
        self._states: dict[int, _Partition] = {}
        # Open windows of revoked partitions, kept in case the revocation came from a broker
        # restart: then their records exist nowhere else (see _seal_orphan).
        self._orphans: dict[int, _Partition] = {}
        # Assigned partitions: checked on the next tick even if no record comes (a consumer
        # positioned past the log end of a new incarnation would otherwise wait forever).
        self._claimed: set[int] = set()
        # Assigned partitions with nothing sealed in their epoch, not set up yet (they are on
        # the first record): since when, so a consumer that gets none is noticed (STALL_S).
        self._unstarted: dict[int, float] = {}
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
        position = self.ledger.position(self.topic, partition)
        check = self._incarnation_check(partition, position)
        if check is None:
            # Nothing read in this epoch yet: the partition starts at the log's first offset.
            sealed_floor = await self._earliest(partition) - 1
        elif check.at_start:
            sealed_floor = check.offset - 1  # the epoch's first window starts at its start
        else:
            sealed_floor = check.offset
            await self.sealer.repair_window_point(self.topic, partition)
        windower = PartitionWindower(
            self.topic, partition, window_us=self.window_us, salt_key=self._salt_key,
            salt_key_id=self._salt_key_id, sealed_offset=sealed_floor,
            prev_end_us=self.ledger.previous_window_end_us(self.topic, partition),
            sealed_leaf=self.ledger.sealed_leaf, epoch=position.epoch,
            sealed_high=self.ledger.max_sealed_seq)
        state = self._states[partition] = _Partition(windower, epoch=position.epoch,
                                                     note_start=check is None)
        if check is not None:
            # Nothing below S may be skipped until the record at S proves this is the
            # incarnation S was sealed from; with nothing sealed but a start noted (readings
            # maybe stored as received), nothing is taken until the record there does (D56).
            log.info("partition %s: checking the record at %s %s (epoch %s)", partition,
                     check.what, check.offset, position.epoch)
            await self._begin_check(partition, state, check)
        return state

    def _incarnation_check(self, partition: int,
                           position: PartitionPosition) -> IncarnationCheck | None:
        """The record that proves the partition's incarnation in its current epoch: the one at
        the sealed offset (the ledger's tail), else the one at the epoch's noted start, else
        None (nothing read in the epoch: nothing could be skipped or was stored)."""
        if position.sealed_offset is not None:
            return IncarnationCheck(position.sealed_offset, position.tail_hash, at_start=False)
        start = self.ledger.epoch_start(self.topic, partition, position.epoch)
        return None if start is None else IncarnationCheck(start.offset, start.record_hash,
                                                           at_start=True)

    async def _begin_check(self, partition: int, state: _Partition,
                           check: IncarnationCheck) -> None:
        """Take nothing more of the partition until the record at ``check.offset`` is seen."""
        state.verify_offset, state.verify_hash = check.offset, check.record_hash
        state.verify_start = check.at_start
        state.verify_earliest_checked = False
        state.seek_target, state.seeked_at = check.offset, time.monotonic()
        await self._seek(partition, check.offset)

    # --- records ------------------------------------------------------------------------------
    async def handle(self, partition: int, offset: int, key: bytes, value: bytes,
                     ack: Ack) -> None:
        async with self._lock(partition):
            self._unstarted.pop(partition, None)
            state = await self._state(partition)
            if state.sealing is not None and state.sealing.done() and not await self._drain(
                    partition, state):
                return  # its window was refused: resynced, this record comes again
            state.last_record = time.monotonic()
            if state.verify_offset is not None and not await self._verify(
                    partition, state, offset, key, value, ack):
                return
            windower = state.windower
            expected = windower.expected_offset
            if expected is not None and offset > expected and not self._hole(
                    partition, state, expected, offset):
                self.stats.out_of_position += 1
                # Again after RESEEK_S: a rebalance's own seek (to Kafka's committed offset,
                # which after a broker restart may belong to the old incarnation) can undo ours.
                target = expected if state.hole_seeks < HOLE_SEEKS else state.hole_next
                if (state.seek_target != target
                        or time.monotonic() - state.seeked_at > RESEEK_S):
                    log.info("partition %s: got offset %s, expected %s: seeking to %s",
                             partition, offset, expected, target)
                    state.hole_seeks += 1
                    state.seek_target, state.seeked_at = target, time.monotonic()
                    await self._seek(partition, target)
                return
            state.seek_target = None
            state.hole_at = None
            if state.note_start and not await self._note_start(partition, state, offset, key,
                                                               value):
                return  # another start is noted: resynced, checking it; this record comes again
            result = windower.offer(offset, value, key)
            if result.outcome == "already_done":
                self.stats.skipped += 1
                sealed = windower.sealed_offset
                if sealed is not None and offset <= sealed:
                    ack()
                return
            stats = self.stats
            stats.records_in += 1
            stats.readings_in += result.readings
            state.acks.append((offset, ack))
            state.last_arrival = time.monotonic()
            if result.kept and result.window_id is not None:
                stats.kept += len(result.kept)
                self.sealer.received_many(result.kept, result.window_id)
                stats.late += result.late_count
            stats.duplicates += result.duplicates
            stats.conflicts += result.conflicts
            stats.invalid += result.invalid
            # One window seals in the background at a time: a partition whose previous window
            # is still sealing waits for it here (so the backlog stays one window).
            if result.closed is not None and await self._drain(partition, state):
                self._seal_in_background(partition, state, result.closed)

    def _hole(self, partition: int, state: _Partition, expected: int, offset: int) -> bool:
        """True if ``offset`` is to be taken although ``expected`` is below it: the records
        from ``expected`` on never came after HOLE_SEEKS seeks, and ``offset`` is the lowest
        later one seen (a hole in the log, not a consumer ahead of its place)."""
        if state.hole_at != expected:
            state.hole_at, state.hole_seeks, state.hole_next = expected, 0, offset
            return False
        state.hole_next = min(state.hole_next, offset)
        if state.hole_seeks < HOLE_SEEKS or offset != state.hole_next:
            return False
        self.stats.holes += 1
        log.warning("partition %s: offsets %s..%s never came after %s seeks although offset %s "
                    "did: a hole in Kafka's log; going on from %s", partition, expected,
                    offset - 1, state.hole_seeks, offset, offset)
        return True

    async def idle_tick(self) -> None:
        """Seal open windows of partitions that received nothing for ``idle_seal_seconds``.

        Only when the partition is drained as far as the consumer knows (its high watermark is
        not beyond what we took): records that are merely delayed (a rebalance, a slow fetch)
        must not cause a wall-clock cut, which replay could not reproduce.
        """
        await self._take_claims()
        await self._check_log_ends()
        now = time.monotonic()
        for partition, state in list(self._states.items()):
            if state.sealing is not None and state.sealing.done():
                async with self._lock(partition):
                    if self._states.get(partition) is state and not await self._drain(
                            partition, state):
                        continue  # its window was refused: resynced from the ledger
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

    # --- incarnations and epochs ---------------------------------------------------------------
    async def _note_start(self, partition: int, state: _Partition, offset: int, key: bytes,
                          value: bytes) -> bool:
        """Note the epoch's first record in the ledger before anything of it is stored as
        received; False (the partition resynced) if another start is noted or the epoch moved."""
        if self.ledger.note_epoch_start(self.topic, partition, state.epoch, offset,
                                        record_hash(key, value)):
            state.note_start = False
            return True
        log.warning("partition %s: offset %s is not the start noted for epoch %s (or the epoch "
                    "moved on); resyncing from the ledger", partition, offset, state.epoch)
        self.stats.resyncs += 1
        await self._restart_from_ledger(partition)
        return False

    async def _verify(self, partition: int, state: _Partition, offset: int, key: bytes,
                      value: bytes, ack: Ack) -> bool:
        """Check the record at the sealed offset against the ledger's tail, or at the noted
        start of an epoch with nothing sealed (see module doc); True if the record is to be
        offered now (a start that matched: it was not sealed)."""
        target = state.verify_offset
        assert target is not None
        what = IncarnationCheck.what_of(state.verify_start)
        read = "first read" if state.verify_start else "sealed"
        if offset < target:
            return False  # fetched before our seek took effect; it comes again if it is needed
        if offset > target:
            # Either fetched before our seek took effect, or the record at S is gone (retention
            # deleted it): then nothing at or below S can be offered again, and nothing new can
            # be skipped, so the partition goes on in its epoch.
            if not state.verify_earliest_checked:
                state.verify_earliest_checked = True
                if await self._earliest(partition) > target:
                    log.warning("partition %s: the record at sealed offset %s is no longer in "
                                "Kafka; cannot check its incarnation, going on in epoch %s",
                                partition, target, state.epoch)
                    self._verified(state)
                    self._orphans.pop(partition, None)
                    await self._seek(partition, target + 1)
                    return False
            if state.hole_at != target:
                state.hole_at, state.hole_seeks = target, 0
            if state.hole_seeks >= HOLE_SEEKS:
                # The record at S never comes although later ones do: S was read from the
                # incarnation it was sealed in, so this one is another (with a hole at S).
                if state.windower.has_open:
                    await self._salvage(partition, state)
                    if self._states.get(partition) is not state:
                        return False
                await self._new_epoch(partition, state, f"the record at {what} {target} "
                                      f"never came after {state.hole_seeks} seeks although "
                                      f"offset {offset} did (topic recreated or broker restarted)")
                return False
            if state.seek_target != target or time.monotonic() - state.seeked_at > RESEEK_S:
                state.hole_seeks += 1
                state.seek_target, state.seeked_at = target, time.monotonic()
                await self._seek(partition, target)
            return False
        state.hole_at = None
        if state.verify_hash is not None and record_hash(key, value) != state.verify_hash:
            if state.windower.has_open:  # a recheck while running: those records were read
                await self._salvage(partition, state)
                if self._states.get(partition) is not state:
                    return False  # the seal was refused: the partition was resynced
            await self._new_epoch(partition, state, f"the record at {what} {offset} is not the "
                                  f"one {read} there (topic recreated or broker restarted)")
            return False
        start = state.verify_start
        self._verified(state)
        self._orphans.pop(partition, None)  # same incarnation: Kafka still has those records
        if start:
            return True  # the epoch's first record, not sealed: taken like any other
        self.stats.skipped += 1
        ack()  # the sealed record itself: done
        return False

    @staticmethod
    def _verified(state: _Partition) -> None:
        state.verify_offset = state.verify_hash = None
        state.verify_start = False
        state.seek_target = None
        state.end_seen = None  # same incarnation: a lagging high watermark is not a new dip

    async def _check_log_ends(self) -> None:
        """Start a new epoch for partitions whose log end fell to or below what is done; seek
        back partitions whose consumer stalled (see STALL_S)."""
        await self._start_stalled_claims()
        for partition, state in list(self._states.items()):
            highwater = self._highwater(partition)
            self._say_if_stuck(partition, state, highwater)
            if highwater is None:
                continue
            await self._unstall(partition, state, highwater)
            target = state.seek_target
            if (target is not None and highwater > target
                    and time.monotonic() - state.seeked_at > RESEEK_S):
                # Waiting for a record that Kafka has, and none comes: the consumer sits
                # elsewhere (a rebalance's seek, past the log end of a new incarnation).
                async with self._lock(partition):
                    if self._states.get(partition) is state and state.seek_target == target:
                        state.seeked_at = time.monotonic()
                        if state.hole_at == target:  # a seek for the hole rule too
                            state.hole_seeks += 1
                        await self._seek(partition, target)
            if (state.verify_offset is None and state.end_seen is not None
                    and highwater < state.end_seen
                    and await self._recheck(partition, state, highwater)):
                continue
            done = state.windower.done_offset
            if state.verify_offset is not None:
                done = state.verify_offset
            if done is None or highwater > done:
                state.backwards_since = None
                if state.verify_offset is None:
                    state.end_seen = max(state.end_seen or 0, highwater)
                continue
            now = time.monotonic()
            if state.backwards_since is None:
                state.backwards_since = now
            if now - state.backwards_since < BACKWARDS_CONFIRM_S:
                continue
            async with self._lock(partition):
                if self._states.get(partition) is not state:
                    continue
                reason = (f"Kafka's log end {highwater} is at or below offset {done}, "
                          "already taken: offsets went backwards (broker restarted, topic "
                          "recreated or log truncated)")
                if state.windower.has_open:
                    await self._salvage(partition, state)
                    if self._states.get(partition) is not state:
                        continue  # the seal was refused: the partition was resynced
                await self._new_epoch(partition, state, reason)

    def _say_if_stuck(self, partition: int, state: _Partition, highwater: int | None) -> None:
        """A partition without records for long although seeks were made: say so (every 10 s),
        with what the consumer reports, so an operator sees it (and a soak can be read)."""
        now = time.monotonic()
        expected = state.windower.expected_offset
        if (now - state.last_record < 10 * STALL_S or now - state.stuck_said < 10 * STALL_S
                or (highwater is not None and expected is not None and highwater <= expected)):
            return
        state.stuck_said = now
        log.warning("partition %s: still no record after %.0fs (Kafka's log end %s, expected "
                    "offset %s, seek to %s pending, incarnation check at %s)", partition,
                    now - state.last_record, highwater, expected, state.seek_target,
                    state.verify_offset)

    def _stall_s(self, partition: int, expected: int, highwater: int) -> float:
        """How long a partition may stay quiet: STALL_S, or IN_FLIGHT_STALL_S while the
        consumer's position shows it took records past ``expected`` from a log that has them."""
        position = self._position(partition)
        if position is not None and expected < position <= highwater:
            return IN_FLIGHT_STALL_S
        return STALL_S

    def _quiet_since(self, partition: int, state: _Partition) -> float:
        """Since when no record of the partition was handled or handed over by the consumer."""
        return max(state.last_record, self._fetched(partition) or 0.0)

    async def _unstall(self, partition: int, state: _Partition, highwater: int) -> None:
        """Kafka has records from the expected offset on, yet none came for STALL_S: the
        consumer sits elsewhere; seek it back (repeated by the RESEEK_S rule until it arrives)."""
        now = time.monotonic()
        expected = state.windower.expected_offset
        if (state.verify_offset is not None or state.seek_target is not None or expected is None
                or highwater <= expected
                or now - self._quiet_since(partition, state) < self._stall_s(partition,
                                                                              expected, highwater)
                or now - state.seeked_at < STALL_S):
            return
        async with self._lock(partition):
            if self._states.get(partition) is not state or state.seek_target is not None:
                return
            expected = state.windower.expected_offset
            if expected is None:
                return
            self.stats.stalls += 1
            log.warning("partition %s: no record for %.0fs although Kafka's log end is %s, past "
                        "the expected offset %s: the consumer sits elsewhere; seeking back",
                        partition, now - state.last_record, highwater, expected)
            state.seek_target, state.seeked_at = expected, now
            await self._seek(partition, expected)

    async def _start_stalled_claims(self) -> None:
        """A partition taken with nothing sealed is set up on its first record; if Kafka has
        records but none comes for STALL_S, set it up now (at the log's first offset) and seek
        there: the consumer may sit past the new incarnation's log end."""
        now = time.monotonic()
        for partition, since in list(self._unstarted.items()):
            highwater = self._highwater(partition)
            if (now - max(since, self._fetched(partition) or 0.0) < STALL_S
                    or highwater is None or highwater <= 0):
                continue
            async with self._lock(partition):
                if self._unstarted.pop(partition, None) is None or partition in self._states:
                    continue
                state = await self._state(partition)
                expected = state.windower.expected_offset
                if state.verify_offset is not None or expected is None or highwater <= expected:
                    continue
                self.stats.stalls += 1
                log.warning("partition %s: no record since it was assigned %.0fs ago although "
                            "Kafka's log end is %s; seeking to its first offset %s", partition,
                            now - since, highwater, expected)
                state.seek_target, state.seeked_at = expected, now
                await self._seek(partition, expected)

    async def _recheck(self, partition: int, state: _Partition, highwater: int) -> bool:
        """The log end fell below one seen before in this epoch: a broker restart whose new
        log already passed our position, or (Apache Kafka) a leader whose high watermark lags.
        Check the record at the sealed offset again, keeping the open window; True if started.
        """
        async with self._lock(partition):
            if self._states.get(partition) is not state or state.verify_offset is not None:
                return False
            if not await self._drain(partition, state):
                return False
            position = self.ledger.position(self.topic, partition)
            if position.epoch != state.epoch:
                return False
            check = self._incarnation_check(partition, position)
            if check is None:
                return False  # nothing read in this epoch: the log-end rule decides
            log.warning("partition %s: Kafka's log end fell from %s to %s; checking the record "
                        "at %s %s again", partition, state.end_seen, highwater, check.what,
                        check.offset)
            await self._begin_check(partition, state, check)
            return True

    async def _salvage(self, partition: int, state: _Partition) -> None:
        """Seal the open window of an incarnation that is gone: its records were read intact,
        only what followed them is lost.  Recorded as an idle cut (a wall-clock cut)."""
        closed = state.windower.cut_idle()
        if closed is not None:
            self.stats.salvaged += len(closed.readings)
            log.warning("partition %s: sealing the open window of the incarnation that is gone "
                        "(offsets %s..%s, %s readings)", partition, closed.first_offset,
                        closed.last_offset, len(closed.readings))
            await self._seal(partition, state, closed)

    async def _seal_orphan(self, partition: int, state: _Partition) -> None:
        """Before a new epoch, seal the open window this worker held when it lost the partition
        in the rebalance the broker's restart caused: read intact from the old incarnation, it
        exists nowhere else.  Only if it still follows what is sealed in the same epoch (the
        ledger fences it otherwise: another worker went on, and then it is not ours to seal)."""
        orphan = self._orphans.pop(partition, None)
        if orphan is None or orphan.epoch != state.epoch:
            return
        sealed = self.ledger.position(self.topic, partition).sealed_offset
        first = orphan.windower.open_first_offset
        if first is None or (sealed is not None and first != sealed + 1):
            return
        closed = orphan.windower.cut_idle()
        if closed is None:
            return
        while True:
            try:
                result = await self.sealer.seal(closed)
                break
            except SealRefused as exc:
                log.warning("partition %s: the old incarnation's open window was refused: %s",
                            partition, exc)
                return
            except Exception as exc:  # InfluxDB/Kafka trouble: its records exist nowhere else
                if self.stopping:
                    raise
                self.stats.seal_retries += 1
                log.warning("partition %s: sealing the old incarnation's open window failed "
                            "(%s: %s); retrying", partition, type(exc).__name__, exc)
                await asyncio.sleep(self._retry_delay_s)
        self.stats.salvaged += len(closed.readings)
        log.warning("partition %s: sealed the open window the worker held when the broker went "
                    "(offsets %s..%s, %s readings) in epoch %s", partition, closed.first_offset,
                    closed.last_offset, len(closed.readings), orphan.epoch)
        if result.log_index is not None:
            self.stats.sealed_windows += 1
            self.stats.sealed_readings += result.readings
            self.stats.idle_cuts += 1

    async def _new_epoch(self, partition: int, state: _Partition, reason: str) -> None:
        if not await self._drain(partition, state):
            return  # a window sealing in the background was refused: resynced instead
        orphan = self._orphans.get(partition)
        seen = [e for e in (state.end_seen, orphan and orphan.end_seen) if e is not None]
        await self._seal_orphan(partition, state)
        epoch = self.ledger.begin_epoch(self.topic, partition, state.epoch, reason,
                                        prior_end_offset=max(seen) if seen else None)
        unsealed = len(state.acks)
        log.warning("partition %s: %s; now in epoch %s (from %s), reading it again from its "
                    "first offset; %s records read but not sealed are dropped with the old "
                    "incarnation", partition, reason, epoch, state.epoch, unsealed)
        self.stats.epochs += 1
        await self._restart_from_ledger(partition)

    async def _restart_from_ledger(self, partition: int) -> None:
        """Drop what this worker holds of the partition and go on from where the ledger says."""
        self._states.pop(partition, None)
        fresh = await self._state(partition)
        target = fresh.windower.expected_offset
        if fresh.verify_offset is None and target is not None:
            fresh.seek_target, fresh.seeked_at = target, time.monotonic()
            await self._seek(partition, target)

    def claim(self, partitions: set[int]) -> None:
        """Note newly assigned partitions; their state (and incarnation check) is set up by the
        next :meth:`idle_tick`, outside the rebalance callback that reports them."""
        self._claimed |= partitions

    async def _take_claims(self) -> None:
        for partition in sorted(self._claimed - set(self._states)):
            self._claimed.discard(partition)
            if self._incarnation_check(
                    partition, self.ledger.position(self.topic, partition)) is None:
                # Nothing read in this epoch, nothing that could be skipped: the first record
                # sets the partition up, and asks Kafka for its first offset only then.
                self._unstarted.setdefault(partition, time.monotonic())
                continue
            async with self._lock(partition):
                if partition not in self._states:
                    await self._state(partition)

    async def revoke(self, partitions: set[int]) -> None:
        """Forget revoked partitions (waits for an in-flight seal, so it never races a new owner)."""
        self._claimed -= partitions
        for partition in partitions:
            self._unstarted.pop(partition, None)
            async with self._lock(partition):
                state = self._states.get(partition)
                if state is not None and state.sealing is not None:
                    await asyncio.shield(state.sealing)  # never races the partition's new owner
                state = self._states.pop(partition, None)
                if (state is not None and state.windower.has_open
                        and state.verify_offset is None):
                    self._orphans[partition] = state
                else:
                    self._orphans.pop(partition, None)

    # --- sealing ------------------------------------------------------------------------------
    # A window cut by a record seals in the background (``_seal_in_background``) while the
    # partition's next records are taken and written to InfluxDB as received: sealing (the
    # receipt flush, the ledger append, the ``windows`` point) took 80-130 ms a window, and with
    # every partition's window cut at the same event-time boundary the worker used to take no
    # record for 300-600 ms every window (docs/PERFORMANCE.md, D55). Nothing else changes: a
    # partition still seals its windows one at a time and in order, acks only what is sealed,
    # in offset order, and every path that reads or changes what is sealed (an idle cut, a new
    # epoch, a recheck, a revocation) first waits for the window in flight (``_drain``).
    def _seal_in_background(self, partition: int, state: _Partition, closed: ClosedWindow) -> None:
        state.sealing = asyncio.get_running_loop().create_task(
            self._seal_quietly(partition, state, closed), name=f"seal-{self.topic}-{partition}")

    async def _seal_quietly(self, partition: int, state: _Partition, closed: ClosedWindow) -> None:
        """Seal ``closed``; a refusal or a failure is left on ``state`` for the lock holder."""
        try:
            result = await self._seal_attempts(partition, closed)
        except SealRefused as exc:
            self._say_refused(partition, exc)
            state.refused = True
            return
        except Exception as exc:  # stopping, or a bug: raised to the agent by the next record
            if not self.stopping:
                log.exception("partition %s: sealing %s failed", partition,
                              closed.header["window_id"] if closed.header else "range")
            state.failed = exc
            return
        self._sealed(state, closed, result)

    async def _drain(self, partition: int, state: _Partition) -> bool:
        """Wait for the window ``state`` seals in the background (the caller holds the
        partition's lock); False if it was refused, the partition then resynced from the ledger
        (``state`` is gone).  Raises what a background seal failed with."""
        task = state.sealing
        if task is not None:
            await asyncio.shield(task)  # a cancelled caller must not cancel the seal
            state.sealing = None
        if state.failed is not None:
            failed, state.failed = state.failed, None
            raise failed
        if state.refused:
            state.refused = False
            if self._states.get(partition) is state:
                await self._restart_from_ledger(partition)
            return False
        return self._states.get(partition) is state

    async def settle(self) -> None:
        """Wait until no partition has a window sealing in the background (tests, shutdown)."""
        for partition, state in list(self._states.items()):
            if state.sealing is not None:
                async with self._lock(partition):
                    if self._states.get(partition) is state:
                        await self._drain(partition, state)

    async def _seal(self, partition: int, state: _Partition, closed: ClosedWindow) -> None:
        """Seal ``closed`` now (idle cuts, salvage), after the window in flight if any."""
        if not await self._drain(partition, state):
            return
        try:
            result = await self._seal_attempts(partition, closed)
        except SealRefused as exc:
            self._say_refused(partition, exc)
            await self._restart_from_ledger(partition)
            return
        self._sealed(state, closed, result)

    def _say_refused(self, partition: int, exc: SealRefused) -> None:
        log.warning("partition %s: %s; resyncing from the ledger", partition, exc)
        self.stats.resyncs += 1

    async def _seal_attempts(self, partition: int, closed: ClosedWindow) -> SealResult:
        """The sealer's result, retried while InfluxDB or the ledger is in trouble; raises
        :class:`SealRefused`, and anything else once the worker is stopping."""
        while True:
            try:
                return await self.sealer.seal(closed)
            except SealRefused:
                raise
            except Exception as exc:  # InfluxDB/Kafka trouble: keep the window, try again
                if self.stopping:
                    raise
                self.stats.seal_retries += 1
                log.warning("partition %s: sealing %s failed (%s: %s); retrying", partition,
                            closed.header["window_id"] if closed.header else "range",
                            type(exc).__name__, exc)
                await asyncio.sleep(self._retry_delay_s)

    def _sealed(self, state: _Partition, closed: ClosedWindow, result: SealResult) -> None:
        state.windower.mark_sealed(closed)
        done = [a for a in state.acks if a[0] <= closed.last_offset]
        state.acks = [a for a in state.acks if a[0] > closed.last_offset]
        for _, ack in done:  # in offset order, so commits never pass an unsealed record
            ack()
        if result.log_index is not None:
            self.stats.sealed_windows += 1
            self.stats.sealed_readings += result.readings
            self.stats.idle_cuts += closed.idle_cut
