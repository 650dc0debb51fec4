"""A read-only view of the ledger, with the listings the audit needs.

The audit must never create or change the ledger it judges (an auditor often works on a copy),
so it opens the SQLite file with ``mode=ro`` (or the PostgreSQL database in read-only
transactions, ``default_transaction_read_only``) instead of going through :class:`Ledger`, whose
constructor creates the file and schema.  The queries use only the ledger's primary key
``(device_id, seq)`` and its window time index, so memory stays bounded on large logs: readings
of a window are listed per device of its header, never by scanning the reading index.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitalchain.core.integrity import WINDOW_FORMAT
from vitalchain.errors import Unavailable
from vitalchain.storage.ledger import (
    EPOCH_COLUMNS,
    WINDOW_OF_ROW,
    EpochRecord,
    PartitionPosition,
    epoch_record,
)
from vitalchain.storage.sqldb import SqlDb, connect, is_postgres_url, redact_url


class LedgerUnavailable(Unavailable):
    """The ledger file is missing or not a vitalchain ledger."""


@dataclass(frozen=True, slots=True)
class WindowInfo:
    log_index: int
    window_id: str
    start_us: int
    end_us: int
    header: dict[str, Any]
    sealed_at_us: int = 0


@dataclass(frozen=True, slots=True)
class IndexedReading:
    device_id: str
    seq: int
    ts_us: int
    window_id: str
    log_index: int
    index_in_window: int
    leaf_hash: bytes


# The window id from ledger_windows by log index: reading index rows do not repeat it (D46).
_READINGS = (f"SELECT r.device_id, r.seq, r.ts_us, {WINDOW_OF_ROW}, r.log_index, "
             "r.index_in_window, r.leaf_hash FROM ledger_readings r LEFT JOIN ledger_windows w "
             "ON w.log_index = r.log_index")


def _reading(row: tuple[Any, ...]) -> IndexedReading:
    return IndexedReading(str(row[0]), int(row[1]), int(row[2]), str(row[3]), int(row[4]),
                          int(row[5]), bytes(row[6]))


class LedgerView:
    def __init__(self, target: Path | str) -> None:
        where = redact_url(str(target)) if is_postgres_url(target) else str(target)
        if not is_postgres_url(target) and not Path(target).is_file():
            raise LedgerUnavailable(f"no ledger at {target}")
        try:
            self._db: SqlDb = connect(target, read_only=True)
        except Unavailable as exc:
            raise LedgerUnavailable(str(exc)) from exc
        try:
            missing = [t for t in ("ledger_windows", "ledger_readings") if not self._db.table_exists(t)]
        except Exception as exc:  # sqlite3.DatabaseError on a file that is not a database
            self._db.close()
            raise LedgerUnavailable(f"{where} is not a vitalchain ledger: {exc}") from exc
        if missing:
            self._db.close()
            raise LedgerUnavailable(f"{where} is not a vitalchain ledger (no {', '.join(missing)})")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LedgerView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_size(self) -> int:
        row = self._db.one("SELECT COUNT(*) FROM ledger_windows")
        return int(row[0]) if row else 0

    def leaf_hashes(self, start: int = 0, end: int | None = None) -> list[bytes]:
        """Window leaf hashes of log indices ``start <= i < end`` (see ``Ledger.leaf_hashes``)."""
        stop = 2**63 - 1 if end is None else end
        return [bytes(leaf) for (leaf,) in self._db.all(
            "SELECT window_leaf FROM ledger_windows WHERE log_index >= ? AND log_index < ? "
            "ORDER BY log_index", (start, stop))]

    def reading_windows(self, start_us: int, end_us: int,
                        below_index: int | None = None) -> list[WindowInfo]:
        """Reading windows overlapping ``[start_us, end_us]``, by ``end_us`` (headers only).

        ``below_index`` keeps only windows with a smaller log index: the audit judges the log as
        it was when it started, not windows a running stream seals while it reads.
        """
        limit = 2**63 - 1 if below_index is None else below_index
        rows = self._db.all(
            "SELECT log_index, window_id, start_us, end_us, header, sealed_at_us FROM ledger_windows "
            "WHERE end_us >= ? AND start_us <= ? AND log_index < ? ORDER BY end_us, log_index",
            (start_us, end_us, limit))
        found = []
        for log_index, window_id, w_start, w_end, header, sealed_at in rows:
            parsed = json.loads(header)
            if parsed.get("format") == WINDOW_FORMAT:
                found.append(WindowInfo(int(log_index), str(window_id), int(w_start), int(w_end),
                                        parsed, int(sealed_at)))
        return found

    def window_index(self, window_id: str) -> int | None:
        """The log index ``window_id`` is sealed at, or None if no window has that id."""
        row = self._db.one("SELECT log_index FROM ledger_windows WHERE window_id=?", (window_id,))
        return None if row is None else int(row[0])

    def locate(self, device_id: str, seq: int) -> IndexedReading | None:
        row = self._db.one(f"{_READINGS} WHERE r.device_id=? AND r.seq=?", (device_id, seq))
        return None if row is None else _reading(row)

    def window_readings(self, window: WindowInfo) -> Iterator[IndexedReading]:
        """The window's index rows, found per device of its header through the primary key."""
        for device_id, span in window.header.get("devices", {}).items():
            rows = self._db.all(
                f"{_READINGS} WHERE r.device_id=? AND r.seq BETWEEN ? AND ? AND r.log_index=?",
                (device_id, int(span["first_seq"]), int(span["last_seq"]), window.log_index))
            for row in rows:
                yield _reading(row)

    def window_place(self, log_index: int) -> tuple[str, int, int] | None:
        """``(topic, partition, epoch)`` of the window at ``log_index`` (epoch 0 when its header
        has none: windows sealed before epochs existed, or in a partition's first epoch)."""
        row = self._db.one("SELECT topic, partition, header FROM ledger_windows "
                           "WHERE log_index=?", (log_index,))
        if row is None:
            return None
        epoch = json.loads(row[2]).get("epoch", 0)
        return str(row[0]), int(row[1]), int(epoch) if isinstance(epoch, int) else 0

    def position(self, topic: str, partition: int) -> PartitionPosition:
        """The partition's current epoch and sealed offset in it, as ``Ledger.position`` (which
        tells the audit which window is open: readings are stored before it seals)."""
        row = (self._db.one("SELECT MAX(epoch) FROM ledger_epochs WHERE topic=? AND partition=?",
                            (topic, partition))
               if self._db.table_exists("ledger_epochs") else None)  # a ledger older than epochs
        epoch = 0 if row is None or row[0] is None else int(row[0])
        row = self._db.one("SELECT sealed_offset, epoch, tail_hash FROM ledger_partitions "
                           "WHERE topic=? AND partition=?", (topic, partition))
        if row is None or int(row[1]) != epoch:
            return PartitionPosition(epoch, None, None)
        return PartitionPosition(epoch, int(row[0]), None if row[2] is None else bytes(row[2]))

    def device_span_in_window(self, log_index: int, device_id: str) -> tuple[int, int] | None:
        """``(first_seq, last_seq)`` of the device in the window at ``log_index`` (its header)."""
        row = self._db.one("SELECT header FROM ledger_windows WHERE log_index=?", (log_index,))
        if row is None:
            return None
        span = json.loads(row[0]).get("devices", {}).get(device_id)
        return None if span is None else (int(span["first_seq"]), int(span["last_seq"]))

    def adjacent(self, device_id: str, seq: int, *, above: bool) -> IndexedReading | None:
        """The device's nearest sealed reading above (or below) ``seq``, any window."""
        op, order = (">", "ASC") if above else ("<", "DESC")
        row = self._db.one(f"{_READINGS} WHERE r.device_id=? AND r.seq {op} ? "
                           f"ORDER BY r.seq {order} LIMIT 1", (device_id, seq))
        return None if row is None else _reading(row)

    def epochs(self) -> list[EpochRecord]:
        """Every new epoch the stream started (none on a ledger older than epochs)."""
        if not self._db.table_exists("ledger_epochs"):
            return []
        rows = self._db.all(f"SELECT {EPOCH_COLUMNS} FROM ledger_epochs ORDER BY topic, partition, epoch")
        return [epoch_record(r) for r in rows]

    def device_seqs(self, device_id: str, lo: int, hi: int) -> Iterator[int]:
        """Sealed sequence numbers of a device in ``[lo, hi]``, ascending (any window)."""
        for (seq,) in self._db.all("SELECT seq FROM ledger_readings WHERE device_id=? "
                                   "AND seq BETWEEN ? AND ? ORDER BY seq", (device_id, lo, hi)):
            yield int(seq)

    def checkpoints(self, contract: str) -> list[Any]:
        """The anchor worker's checkpoint records for ``contract`` (size order); none if no table."""
        from vitalchain.storage.anchors import Checkpoint  # the anchor package owns the record's shape

        if not self._db.table_exists("anchor_checkpoints"):
            return []  # no anchor worker ever ran on this ledger
        return [Checkpoint(**row) for row in self._db.dicts(
            "SELECT * FROM anchor_checkpoints WHERE contract=? ORDER BY size", (contract,))]
