"""Cutting one partition's records into windows: pure logic, no I/O, so it is testable alone.

A window is a contiguous offset range of one partition.  The cut rule is a function of the
records alone (so a replay after a crash reproduces the same windows):

- **event-time cut**: a reading whose ``ts_us`` minus the open window's first ``ts_us`` reaches
  ``window_us`` closes the open window and opens the next one with itself;
- **idle cut** (wall clock, so quiet partitions still seal): :meth:`PartitionWindower.cut_idle`,
  called by the stream when nothing arrived for ``idle_seal_seconds``.  Not reproducible by
  replay, which is why the ledger records it and sealed ranges are never re-cut.

Every record of the range belongs to the window, kept or not:

- *duplicate* (same ``(device_id, seq)`` and same leaf, sealed already or in the open window):
  dropped, counted;
- *conflict* (same ``(device_id, seq)``, different leaf): dead-lettered (``seq_conflict``);
- *invalid* record (should never pass the bridge, but the raw topic is not trusted blindly):
  dead-lettered (``invalid_record``);
- *late* reading (``ts_us`` more than one window length before the previous window's
  ``end_us``: sampled before anything that window could span, so it missed its own window):
  kept, flagged, counted in the header's ``late``.  Never dropped.  A reading only a little
  behind the previous window's newest one is not late: a device's message carries readings
  sampled over a second or more, and messages of many devices interleave (with "before the
  previous window's end" 40-77 % of batched readings were flagged, which said nothing).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vitalchain.core.integrity import (
    CanonicalError,
    blake3_hasher,
    build_window_header,
    window_id,
)
from vitalchain.core.payload.record import RawRecord, RecordError, decode, split_bundle
from vitalchain.ingest.leafpath import checked_reading, reading_leaf

STAGE = "stream"
MAX_DETAIL = 300
RECORD_DOMAIN = b"vitalchain-kafka-record/1\x00"

SealedLeafLookup = Callable[[str, int], bytes | None]
SealedHighLookup = Callable[[str], int | None]


@dataclass(slots=True)
class WindowReading:
    """A kept reading: its canonical object (leaf input), leaf hash and pipeline metadata.

    Never changed once made, but not ``frozen``: one is made per reading, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) cost 1.4 µs against 0.3 µs.
    It was never hashable anyway (it holds a dict)."""

    offset: int
    canonical: dict[str, Any]
    leaf: bytes
    late: bool
    received_us: int
    # Its signed message as the bridge forwarded it (ingest.bridge._signed_part), or None.
    signed: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes
    value: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """A cut window, ready to seal.  ``header`` is None when no reading was kept (the range held
    only duplicates/conflicts): then only the offsets are marked done."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    readings: tuple[WindowReading, ...]
    header: dict[str, Any] | None
    idle_cut: bool
    dead_letters: tuple[DeadLetter, ...]
    duplicates: int
    epoch: int = 0
    tail_hash: bytes | None = None  # record_hash of the record at last_offset

    @property
    def leaf_hashes(self) -> list[bytes]:
        return [r.leaf for r in self.readings]


@dataclass
class _OpenWindow:
    first_offset: int
    last_offset: int
    first_ts: int | None = None
    readings: list[WindowReading] = field(default_factory=list)
    leaves: dict[tuple[str, int], bytes] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    duplicates: int = 0
    late: int = 0
    tail_hash: bytes | None = None


@dataclass(frozen=True, slots=True)
class Offered:
    """What happened to one offered record.  ``outcome`` is the record's: ``kept`` when any of its
    readings was kept, else that of its first reading (``duplicate``, ``conflict``, ``invalid``),
    or ``already_done`` (offset at or below what is sealed or open).  A version-1 record holds
    one reading, so its outcome is that reading's; the counts say what each reading of a batch
    became (every reading is exactly one of kept, duplicate, conflict, invalid)."""

    outcome: str
    closed: ClosedWindow | None = None
    late: bool = False  # any kept reading late
    # The first kept reading and the id of the open window the record went into (its kept
    # readings are written to InfluxDB on receipt with that id).
    reading: WindowReading | None = None
    window_id: str | None = None
    kept: tuple[WindowReading, ...] = ()
    duplicates: int = 0
    conflicts: int = 0
    invalid: int = 0
    late_count: int = 0

    @property
    def readings(self) -> int:
        """Readings the record held (0 for ``already_done``; a bundle's message that is no
        record of ours counts one, its readings unread)."""
        return len(self.kept) + self.duplicates + self.conflicts + self.invalid


def dead_letter(reason: str, detail: str, topic: str, payload: bytes, received_us: int,
                key: bytes) -> DeadLetter:
    value = {"reason": reason, "detail": detail[:MAX_DETAIL], "topic": topic,
             "payload_b64": base64.b64encode(payload).decode("ascii"),
             "received_us": received_us, "stage": STAGE}
    return DeadLetter(key=key, value=json.dumps(value, separators=(",", ":")).encode(),
                      reason=reason)


def record_hash(key: bytes, value: bytes) -> bytes:
    """Identity of one Kafka record's bytes (key and value, length-delimited).

    The ledger keeps it for the record at each partition's sealed offset, so a worker can tell
    whether the record now at that offset is the one sealed (same incarnation) or another one
    (the topic was recreated or a memory-only broker restarted).  The bridge stamps
    ``received_us`` into every value, and ``replayed_us`` into a record it writes again
    (ingest/replay.py), so two incarnations practically never agree here.
    """
    return blake3_hasher.digest(RECORD_DOMAIN + len(key).to_bytes(4, "big") + key + value)


def parse_record(value: bytes) -> tuple[dict[str, Any], int]:
    """Split a raw-topic value into (device reading, received_us); raises ValueError."""
    reading, received_us, _signed = parse_signed_record(value)
    return reading, received_us


def parse_signed_record(value: bytes) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    """Split a version-1 raw-topic value into (device reading, received_us, signed part or None).

    A version-2 value (a batch, :mod:`vitalchain.core.payload.record`) raises: use ``decode``."""
    record = decode(value)
    if record.version != 1:
        raise ValueError("a version-2 record holds a batch of readings")
    return checked_reading(record.readings[0]), record.received_us, record.signed


class PartitionWindower:
    """The open window of one partition, fed records in offset order."""

    def __init__(self, topic: str, partition: int, *, window_us: int, salt_key: bytes,
                 salt_key_id: str, sealed_offset: int | None, prev_end_us: int | None,
                 sealed_leaf: SealedLeafLookup, epoch: int = 0,
                 sealed_high: SealedHighLookup | None = None) -> None:
        if window_us <= 0:
            raise ValueError("window_us must be positive")
        self.topic = topic
        self.partition = partition
        self.window_us = window_us
        self._salt_key = salt_key
        self._salt_key_id = salt_key_id
        self.sealed_offset = sealed_offset
        self.epoch = epoch
        self.prev_end_us = prev_end_us
        self._sealed_leaf = sealed_leaf
        # Dedup without a ledger round trip per reading: per device, the highest seq sealed
        # (loaded from the ledger at first sight, raised as windows seal).  A device's seqs only
        # grow, so a seq above it is not sealed; at or below it the ledger is asked as before.
        # Without ``sealed_high`` every reading asks the ledger.
        self._sealed_high = sealed_high
        self._high: dict[str, int | None] = {}
        self._open: _OpenWindow | None = None
        # Cut but not yet sealed: their offsets are taken and their readings count for dedup.
        self._cut_offset: int | None = None
        self._unsealed_leaves: dict[tuple[str, int], bytes] = {}

    # --- state ------------------------------------------------------------------------------
    @property
    def done_offset(self) -> int | None:
        """Highest offset already taken in (sealed, cut, or in the open window)."""
        if self._open is not None:
            return self._open.last_offset
        if self._cut_offset is not None:
            return max(self._cut_offset, self.sealed_offset or 0)
        return self.sealed_offset

    @property
    def expected_offset(self) -> int | None:
        done = self.done_offset
        return None if done is None else done + 1

    @property
    def open_first_offset(self) -> int | None:
        return None if self._open is None else self._open.first_offset

    @property
    def has_open(self) -> bool:
        return self._open is not None

    # --- feeding ----------------------------------------------------------------------------
    def offer(self, offset: int, value: bytes, key: bytes = b"") -> Offered:
        """Take the record at ``offset`` (every reading of every message it bundles, into one
        window); may return the window it closed (event-time cut, decided once per record: a
        record is never split, so offsets stay the unit of sealing and of replay)."""
        done = self.done_offset
        if done is not None and offset <= done:
            return Offered("already_done")
        tail = record_hash(key, value)
        parts = split_bundle(value)
        bundle = len(parts) > 1
        first_fate: str | None = None  # the record's outcome when nothing is kept
        duplicates = conflicts = invalid = 0
        letters: list[DeadLetter] = []
        # (canonical, leaf, (device_id, seq), index in its message, which of `records`)
        fresh: list[tuple[dict[str, Any], bytes, tuple[str, int], int, int]] = []
        records: list[RawRecord] = []
        here: dict[tuple[str, int], bytes] = {}  # readings of this record so far
        salt_key = self._salt_key
        # A bundle's messages in order, each one's readings in order: as if each message were
        # its own record, except that the event-time cut below is decided once for the whole.
        for m, part in enumerate(parts):
            try:
                record = decode(part)
            except RecordError as exc:
                invalid += 1
                first_fate = first_fate or "invalid"
                letters.append(dead_letter("invalid_record", _where(bundle, m, None) + str(exc),
                                           self.topic, part, _received_us(part), key))
                continue
            records.append(record)
            batch = record.version > 1
            for index, item in enumerate(record.readings):
                try:
                    canonical, leaf = reading_leaf(item, salt_key)
                except (ValueError, KeyError, CanonicalError) as exc:
                    invalid += 1
                    first_fate = first_fate or "invalid"
                    letters.append(dead_letter(
                        "invalid_record", _where(bundle, m, index if batch else None) + str(exc),
                        self.topic, part, record.received_us, key))
                    continue
                identity = (canonical["device_id"], canonical["seq"])
                known = self._known_leaf(identity, here)
                if known is None:
                    here[identity] = leaf
                    fresh.append((canonical, leaf, identity, index, len(records) - 1))
                    first_fate = first_fate or "kept"
                elif known == leaf:
                    duplicates += 1
                    first_fate = first_fate or "duplicate"
                else:
                    conflicts += 1
                    first_fate = first_fate or "conflict"
                    letters.append(dead_letter(
                        "seq_conflict",
                        f"{_where(bundle, m, index if batch else None)}device {identity[0]} seq "
                        f"{identity[1]} already has a different reading (leaf "
                        f"{known.hex()[:16]}..., this one {leaf.hex()[:16]}...)",
                        self.topic, part, record.received_us, key or identity[0].encode()))
        closed = None
        if (fresh and self._open is not None and self._open.first_ts is not None
                and fresh[0][0]["ts_us"] - self._open.first_ts >= self.window_us):
            closed = self._close(idle_cut=False)
        window = self._extend(offset, tail)
        window.dead_letters.extend(letters)
        window.duplicates += duplicates
        kept: list[WindowReading] = []
        late_count = 0
        signed_pending = [r.signed is not None for r in records]
        # What the other readings of a message carry of it ({"at"} in a batch): the same for
        # each, so made once per message and shared (never changed downstream).
        rest: dict[int, dict[str, Any] | None] = {}
        late_before = self.late_before
        readings, leaves = window.readings, window.leaves
        for canonical, leaf, identity, index, m in fresh:
            record = records[m]
            ts = canonical["ts_us"]
            if window.first_ts is None:
                window.first_ts = ts
            late = late_before is not None and ts < late_before
            late_count += late
            # The first kept reading of a message brings its signed message's point along
            # (idempotent: a duplicate of a reading before it already stored the same point).
            if signed_pending[m]:
                signed = record.signed_part(index, True)
                signed_pending[m] = False
            elif m in rest:
                signed = rest[m]
            else:
                signed = rest[m] = record.signed_part(index, False)
            reading = WindowReading(offset, canonical, leaf, late, record.received_us, signed)
            readings.append(reading)
            leaves[identity] = leaf
            kept.append(reading)
        window.late += late_count
        # A record holds at least one message, so first_fate is set.
        outcome = "kept" if kept else first_fate or "invalid"
        return Offered(outcome, closed, late_count > 0, kept[0] if kept else None,
                       window_id(self.partition, window.first_offset, self.epoch) if kept else None,
                       tuple(kept), duplicates, conflicts, invalid, late_count)

    def _known_leaf(self, identity: tuple[str, int],
                    here: dict[tuple[str, int], bytes]) -> bytes | None:
        """The leaf already taken for ``identity`` (this record, the open window, cut windows,
        the ledger), or None."""
        known = here.get(identity)
        if known is None and self._open is not None:
            known = self._open.leaves.get(identity)
        if known is None:
            known = self._unsealed_leaves.get(identity)
        if known is None and self._may_be_sealed(*identity):
            known = self._sealed_leaf(*identity)
        return known

    def cut_idle(self) -> ClosedWindow | None:
        """Close the open window on the wall-clock idle rule (None when nothing is open)."""
        if self._open is None:
            return None
        return self._close(idle_cut=True)

    def mark_sealed(self, closed: ClosedWindow) -> None:
        """Record that ``closed`` is durably sealed (its offsets are done for good)."""
        if self.sealed_offset is None or closed.last_offset > self.sealed_offset:
            self.sealed_offset = closed.last_offset
        high = self._high
        for reading in closed.readings:
            device, seq = reading.canonical["device_id"], reading.canonical["seq"]
            self._unsealed_leaves.pop((device, seq), None)
            if device in high:
                mark = high[device]
                if mark is None or seq > mark:
                    high[device] = seq

    def _may_be_sealed(self, device: str, seq: int) -> bool:
        """False only when the ledger cannot hold ``(device, seq)``: seq above the device's mark."""
        if self._sealed_high is None:
            return True
        if device not in self._high:
            self._high[device] = self._sealed_high(device)
        mark = self._high[device]
        return mark is not None and seq <= mark

    # --- internals ----------------------------------------------------------------------------
    def _extend(self, offset: int, tail_hash: bytes) -> _OpenWindow:
        if self._open is None:
            # A new window starts right after what is done, also when Kafka's log has a hole
            # there (the processor takes a later offset after HOLE_SEEKS): windows stay
            # contiguous, as the ledger requires.
            expected = self.expected_offset
            first = expected if expected is not None and expected < offset else offset
            self._open = _OpenWindow(first_offset=first, last_offset=offset)
        else:
            self._open.last_offset = offset
        self._open.tail_hash = tail_hash
        return self._open

    @property
    def late_before(self) -> int | None:
        """Readings sampled before this are late (module doc): one window length before the
        previous window's newest reading."""
        return None if self.prev_end_us is None else self.prev_end_us - self.window_us

    def _close(self, idle_cut: bool) -> ClosedWindow:
        window = self._open
        assert window is not None
        self._open = None
        header = None
        if window.readings:
            header = build_window_header(
                [r.canonical for r in window.readings], partition=self.partition,
                first_offset=window.first_offset, last_offset=window.last_offset,
                salt_key_id=self._salt_key_id, late=window.late,
                leaf_hashes=[r.leaf for r in window.readings], epoch=self.epoch)
            # Readings of the next window are late relative to this one, sealed or not yet.
            self.prev_end_us = header["end_us"]
        # The closed window's offsets count as taken: the next window starts after them.
        self._cut_offset = window.last_offset
        self._unsealed_leaves.update(window.leaves)
        return ClosedWindow(self.topic, self.partition, window.first_offset, window.last_offset,
                            tuple(window.readings), header, idle_cut,
                            tuple(window.dead_letters), window.duplicates, self.epoch,
                            window.tail_hash)


def _where(bundle: bool, message: int, index: int | None) -> str:
    """Where in a record a refusal is (its dead letter's detail starts with it): the message of
    a bundle, the reading of a batch.  Made only for a refusal, not for every reading."""
    at = f"messages[{message}]: " if bundle else ""
    return at if index is None else f"{at}readings[{index}]: "


def _received_us(value: bytes) -> int:
    try:
        obj = json.loads(value)
        received = obj.get("received_us") if isinstance(obj, dict) else None
        return received if type(received) is int else 0
    except (ValueError, UnicodeDecodeError):
        return 0
