"""Verified reads: every stored reading is checked against the ledger before anyone is served it.

InfluxDB is where readings are *queried*, but anyone with write access to it can change a value
or insert a point; the ledger is the record of what was sealed.  So before the API, FHIR or the
dashboard use a point, :class:`ReadVerifier` recomputes its leaf from the stored fields
(:func:`vitalchain.storage.readings.stored_leaf`, the same function the audit and the proof
service use) and compares it with the leaf the ledger holds for its ``(device_id, seq)``.  The
verdict is the reading's *state*:

- ``anchored``: the leaf matches, and its window is inside the largest checkpoint the anchor
  worker recorded as anchored (whose root the ledger still reproduces: the caller checks that);
- ``sealed``: the leaf matches the ledger; the window is not anchored (yet);
- ``received``: the ledger has no leaf for ``(device_id, seq)`` and the window the point names
  is the one its partition has open now (``p<partition>-<sealed offset + 1>``, with ``e<epoch>``
  after the partition's first epoch: the only window that can be open, since windows are
  contiguous offset ranges fenced on the sealed offset).  The stream writes every reading on
  receipt, so this is every reading's state until its window seals: shown, *not verified*;
- ``altered``: the ledger has a leaf for ``(device_id, seq)`` and the point does not hash to it
  (or cannot be rebuilt at all);
- ``unknown``: the ledger has no leaf for it and it cannot be in an open window (its window is
  sealed without it, cannot be open, or it names none): a point nobody sealed.

Only the first three are *servable*: their values may be shown and used (NEWS2, latest).  The
state is computed from trusted inputs only (the ledger, the anchor records); nothing the point
says about itself (its ``leaf``, ``window_id`` beyond naming a candidate open window, ``late``)
can make it look sealed.  The ledger is read offsets first, leaves second, so a window sealed
between the two reads makes its readings ``sealed``, never a false ``unknown``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vitalchain.storage.ledger import Ledger, PartitionPosition, ReadingLocation
from vitalchain.storage.readings import LeafMemo, StoredReading, StoredReadingError, stored_leaf

# The stream's window ids (docs/STREAM.md); partitions and offsets bounded so SQLite takes them.
_WINDOW_ID = re.compile(r"p([0-9]{1,9})(?:e([0-9]{1,9}))?-([0-9]{1,18})")


PositionOf = Callable[[int], PartitionPosition]


def parse_window_id(window_id: object) -> tuple[int, int, int] | None:
    """``(partition, epoch, first_offset)`` of a stream window id, None for anything else."""
    match = _WINDOW_ID.fullmatch(window_id) if isinstance(window_id, str) else None
    return None if match is None else (int(match[1]), int(match[2] or 0), int(match[3]))


def open_window_state(window_id: object, position_of: PositionOf) -> tuple[bool, str]:
    """Whether ``window_id`` names its partition's one open window now, and why (not).

    THE rule for a reading the ledger does not hold yet, shared by verified reads and the audit:
    the open window of a partition is ``p<partition>[e<epoch>]-<sealed offset + 1>`` in its
    current epoch (offset 0 while nothing is sealed in it: memory-only Kafka starts a new
    incarnation's offsets at 0).  ``position_of(partition)`` reads the ledger's position.
    """
    match = _WINDOW_ID.fullmatch(window_id) if isinstance(window_id, str) else None
    if not match:
        return False, f"sealed nowhere, and {window_id!r} is no stream window"
    partition, epoch, first = int(match[1]), int(match[2] or 0), int(match[3])
    position = position_of(partition)
    done = -1 if position.sealed_offset is None else position.sealed_offset
    if epoch != position.epoch:
        return False, (f"window {window_id} is of epoch {epoch}, partition {partition} is in "
                       f"epoch {position.epoch}: it cannot be open")
    if first == done + 1:
        return True, (f"received in window {window_id}, still open: not sealed yet, so not "
                      "verified")
    if first <= done:
        return False, (f"window {window_id} is sealed (partition {partition} is sealed up to "
                       f"offset {done}) and does not hold it")
    return False, (f"window {window_id} cannot be open: partition {partition}'s open window "
                   f"starts at offset {done + 1}")


class ReadState(StrEnum):
    RECEIVED = "received"
    SEALED = "sealed"
    ANCHORED = "anchored"
    ALTERED = "altered"
    UNKNOWN = "unknown"


SERVABLE = frozenset({ReadState.RECEIVED, ReadState.SEALED, ReadState.ANCHORED})


@dataclass(frozen=True, slots=True)
class VerifiedReading:
    """One stored point with its verdict.  ``stored`` is None when the point was unreadable.

    ``window_id`` is the ledger's for sealed readings, the (checked) open window for received
    ones, and whatever the point claimed otherwise.
    """

    state: ReadState
    reason: str
    device_id: str
    seq: int | None
    ts_us: int | None
    stored: StoredReading | None
    window_id: str | None
    log_index: int | None = None

    @property
    def servable(self) -> bool:
        return self.state in SERVABLE

    @property
    def verified(self) -> bool:
        """True only when the leaf was checked against the ledger (sealed or anchored)."""
        return self.state in (ReadState.SEALED, ReadState.ANCHORED)

    def served(self) -> dict[str, Any]:
        """The API's reading object: values only when servable, never for altered/unknown."""
        out: dict[str, Any] = {"device_id": self.device_id, "seq": self.seq, "ts_us": self.ts_us,
                               "state": self.state.value, "verified": self.verified}
        if self.servable and self.stored is not None:
            c = self.stored.canonical
            out.update(patient_id=c["patient_id"], vitals=c["vitals"], late=self.stored.late,
                       window_id=self.window_id)
        else:
            out["reason"] = self.reason
        return out


def _identity(row: Mapping[str, Any]) -> tuple[str, int | None, int | None]:
    """Best-effort device, seq and ts_us of a point that could not be rebuilt (for reporting)."""
    device = row.get("device_id")
    seq = row.get("seq")
    if isinstance(seq, float) and seq.is_integer():
        seq = int(seq)
    seq_ok = seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None
    t = row.get("time")
    ts = t // 1000 if isinstance(t, int) and not isinstance(t, bool) else None
    return (device if isinstance(device, str) else "?"), seq_ok, ts


class ReadVerifier:
    """Gives every stored ``readings`` row its :class:`ReadState` against one ledger.

    ``topic`` is the raw topic whose partitions the stream seals (its sealed offsets tell which
    window is open); ``anchored_size`` is the size of the largest anchored checkpoint whose root
    the caller has checked against the ledger (0: nothing anchored); ``memo`` (optional, shared
    between requests) spares re-hashing readings identical to ones hashed before.
    """

    def __init__(self, ledger: Ledger, topic: str, anchored_size: int = 0,
                 memo: LeafMemo | None = None) -> None:
        self.ledger = ledger
        self.topic = topic
        self.anchored_size = anchored_size
        self.memo = memo

    def verify(self, rows: Sequence[Mapping[str, Any]]) -> list[VerifiedReading]:
        """Verdicts for ``rows`` (``SELECT * FROM readings``, epoch ns), in the same order."""
        parsed: list[tuple[StoredReading, bytes] | str] = []
        for row in rows:
            try:
                parsed.append(stored_leaf(row, self.memo))
            except StoredReadingError as exc:
                parsed.append(str(exc))
        sealed_up_to = self._sealed_offsets(rows)  # before the leaves: see the module docstring
        keys: list[tuple[str, int]] = []
        for row, item in zip(rows, parsed, strict=True):
            if isinstance(item, str):
                device, seq, _ = _identity(row)
                if seq is not None:
                    keys.append((device, seq))
            else:
                keys.append((item[0].canonical["device_id"], item[0].canonical["seq"]))
        sealed = self.ledger.locate_many(keys)
        return [self._judge(row, item, sealed, sealed_up_to)
                for row, item in zip(rows, parsed, strict=True)]

    def _sealed_offsets(self, rows: Sequence[Mapping[str, Any]]) -> dict[int, PartitionPosition]:
        """The ledger's position of each partition some row's window id names."""
        partitions: set[int] = set()
        for row in rows:
            match = _WINDOW_ID.fullmatch(str(row.get("window_id", "")))
            if match:
                partitions.add(int(match[1]))
        return {p: self.ledger.position(self.topic, p) for p in partitions}

    def _judge(self, row: Mapping[str, Any], item: tuple[StoredReading, bytes] | str,
               sealed: Mapping[tuple[str, int], ReadingLocation],
               sealed_up_to: Mapping[int, PartitionPosition]) -> VerifiedReading:
        if isinstance(item, str):
            device, seq, ts = _identity(row)
            claimed = row.get("window_id")
            window = claimed if isinstance(claimed, str) else None
            loc = sealed.get((device, seq)) if seq is not None else None
            if loc is not None:
                return VerifiedReading(ReadState.ALTERED, f"sealed in window {loc.window_id}, "
                                       f"but the stored point is unreadable: {item}",
                                       device, seq, loc.ts_us, None, loc.window_id, loc.log_index)
            return VerifiedReading(ReadState.UNKNOWN, f"unreadable point sealed nowhere: {item}",
                                   device, seq, ts, None, window)
        stored, leaf = item
        c = stored.canonical
        device, seq = c["device_id"], c["seq"]
        loc = sealed.get((device, seq))
        if loc is not None:
            if loc.leaf_hash != leaf:
                return VerifiedReading(
                    ReadState.ALTERED, f"the stored point hashes to {leaf.hex()}, window "
                    f"{loc.window_id} sealed {loc.leaf_hash.hex()}: altered after sealing",
                    device, seq, c["ts_us"], stored, loc.window_id, loc.log_index)
            state = ReadState.ANCHORED if loc.log_index < self.anchored_size else ReadState.SEALED
            why = (f"leaf matches window {loc.window_id}" +
                   (", inside the anchored checkpoint" if state is ReadState.ANCHORED else ""))
            return VerifiedReading(state, why, device, seq, c["ts_us"], stored, loc.window_id,
                                   loc.log_index)
        state, why = self._open_window(stored.window_id, sealed_up_to)
        return VerifiedReading(state, why, device, seq, c["ts_us"], stored, stored.window_id)

    @staticmethod
    def _open_window(window_id: str,
                     positions: Mapping[int, PartitionPosition]) -> tuple[ReadState, str]:
        """Received if ``window_id`` is its partition's open window, else unknown (and why)."""
        is_open, why = open_window_state(
            window_id, lambda p: positions.get(p, PartitionPosition(0, None, None)))
        return (ReadState.RECEIVED if is_open else ReadState.UNKNOWN), why
