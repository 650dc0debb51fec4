"""A read-only view of the ledger file, with the listings the audit needs.

The audit must never create or change the ledger it judges (an auditor often works on a copy),
so it opens the SQLite file with ``mode=ro`` instead of going through :class:`Ledger`, whose
constructor creates the file and schema.  The queries use only the ledger's primary key
``(device_id, seq)`` and its window time index, so memory stays bounded on large logs: readings
of a window are listed per device of its header, never by scanning the reading index.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitalchain.core.integrity import WINDOW_FORMAT
from vitalchain.errors import Unavailable
from vitalchain.storage.ledger import EPOCH_COLUMNS, EpochRecord, epoch_record


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


_READING_COLUMNS = "device_id, seq, ts_us, window_id, log_index, index_in_window, leaf_hash"


def _reading(row: tuple[Any, ...]) -> IndexedReading:
    return IndexedReading(str(row[0]), int(row[1]), int(row[2]), str(row[3]), int(row[4]),
                          int(row[5]), bytes(row[6]))


class LedgerView:
    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise LedgerUnavailable(f"no ledger at {path}")
        self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0,
                                   check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout = 30000")
        try:
            self._db.execute("SELECT 1 FROM ledger_windows LIMIT 1").fetchall()
            self._db.execute("SELECT 1 FROM ledger_readings LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise LedgerUnavailable(f"{path} is not a vitalchain ledger: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LedgerView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_size(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM ledger_windows").fetchone()[0])

    def leaf_hashes(self, start: int = 0, end: int | None = None) -> list[bytes]:
        """Window leaf hashes of log indices ``start <= i < end`` (see ``Ledger.leaf_hashes``)."""
        stop = 2**63 - 1 if end is None else end
        return [bytes(leaf) for (leaf,) in self._db.execute(
            "SELECT window_leaf FROM ledger_windows WHERE log_index >= ? AND log_index < ? "
            "ORDER BY log_index", (start, stop))]

    def reading_windows(self, start_us: int, end_us: int,
                        below_index: int | None = None) -> list[WindowInfo]:
        """Reading windows overlapping ``[start_us, end_us]``, by ``end_us`` (headers only).

        ``below_index`` keeps only windows with a smaller log index: the audit judges the log as
        it was when it started, not windows a running stream seals while it reads.
        """
        limit = 2**63 - 1 if below_index is None else below_index
        rows = self._db.execute(
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
        row = self._db.execute("SELECT log_index FROM ledger_windows WHERE window_id=?",
                               (window_id,)).fetchone()
        return None if row is None else int(row[0])

    def locate(self, device_id: str, seq: int) -> IndexedReading | None:
        row = self._db.execute(f"SELECT {_READING_COLUMNS} FROM ledger_readings "
                               "WHERE device_id=? AND seq=?", (device_id, seq)).fetchone()
        return None if row is None else _reading(row)

    def window_readings(self, window: WindowInfo) -> Iterator[IndexedReading]:
        """The window's index rows, found per device of its header through the primary key."""
        for device_id, span in window.header.get("devices", {}).items():
            rows = self._db.execute(
                f"SELECT {_READING_COLUMNS} FROM ledger_readings WHERE device_id=? "
                "AND seq BETWEEN ? AND ? AND log_index=?",
                (device_id, int(span["first_seq"]), int(span["last_seq"]), window.log_index))
            for row in rows:
                yield _reading(row)

    def window_place(self, log_index: int) -> tuple[str, int, int] | None:
        """``(topic, partition, epoch)`` of the window at ``log_index`` (epoch 0 when its header
        has none: windows sealed before epochs existed, or in a partition's first epoch)."""
        row = self._db.execute("SELECT topic, partition, header FROM ledger_windows "
                               "WHERE log_index=?", (log_index,)).fetchone()
        if row is None:
            return None
        epoch = json.loads(row[2]).get("epoch", 0)
        return str(row[0]), int(row[1]), int(epoch) if isinstance(epoch, int) else 0

    def device_span_in_window(self, log_index: int, device_id: str) -> tuple[int, int] | None:
        """``(first_seq, last_seq)`` of the device in the window at ``log_index`` (its header)."""
        row = self._db.execute("SELECT header FROM ledger_windows WHERE log_index=?",
                               (log_index,)).fetchone()
        if row is None:
            return None
        span = json.loads(row[0]).get("devices", {}).get(device_id)
        return None if span is None else (int(span["first_seq"]), int(span["last_seq"]))

    def adjacent(self, device_id: str, seq: int, *, above: bool) -> IndexedReading | None:
        """The device's nearest sealed reading above (or below) ``seq``, any window."""
        op, order = (">", "ASC") if above else ("<", "DESC")
        row = self._db.execute(f"SELECT {_READING_COLUMNS} FROM ledger_readings WHERE device_id=? "
                               f"AND seq {op} ? ORDER BY seq {order} LIMIT 1",
                               (device_id, seq)).fetchone()
        return None if row is None else _reading(row)

    def epochs(self) -> list[EpochRecord]:
        """Every new epoch the stream started (none on a ledger older than epochs)."""
        try:
            rows = self._db.execute(f"SELECT {EPOCH_COLUMNS} FROM ledger_epochs "
                                    "ORDER BY topic, partition, epoch").fetchall()
        except sqlite3.OperationalError:
            return []
        return [epoch_record(r) for r in rows]

    def device_seqs(self, device_id: str, lo: int, hi: int) -> Iterator[int]:
        """Sealed sequence numbers of a device in ``[lo, hi]``, ascending (any window)."""
        for (seq,) in self._db.execute("SELECT seq FROM ledger_readings WHERE device_id=? "
                                       "AND seq BETWEEN ? AND ? ORDER BY seq", (device_id, lo, hi)):
            yield int(seq)

    def checkpoints(self, contract: str) -> list[Any]:
        """The anchor worker's checkpoint records for ``contract`` (size order); none if no table."""
        from vitalchain.storage.anchors import Checkpoint  # the anchor package owns the record's shape

        try:
            cursor = self._db.execute("SELECT * FROM anchor_checkpoints WHERE contract=? "
                                      "ORDER BY size", (contract,))
        except sqlite3.OperationalError:
            return []  # no anchor worker ever ran on this ledger
        names = [d[0] for d in cursor.description]
        return [Checkpoint(**dict(zip(names, row, strict=True))) for row in cursor]
