"""The durable window log: sealed windows in log order, their leaf hashes, the reading index.

The ledger is the record of truth for *what was sealed*: Kafka (tansu) is memory only and
InfluxDB holds the readings, but which readings form which window, in which order, under which
root, and which offsets of each partition are done, lives here.  Everything in it is a hash or an
identity (device id, sequence number, timestamps, offsets): no vital-sign value is ever stored,
so the ledger can be copied to an auditor without leaking health data.

Storage is one SQLite file in WAL mode with a busy timeout, so several stream workers (and the
anchor worker, which keeps its own tables in the same file) on one host can share it; writes take
``BEGIN IMMEDIATE`` so appends are serialised.  In production the same schema lives on a shared
SQL database (one log for all hosts); nothing here depends on SQLite beyond the connection.

Guarantees of :meth:`Ledger.append_window`:

- *append-only*: windows get consecutive log indexes 0, 1, 2, ...; triggers refuse any UPDATE or
  DELETE of sealed windows and index rows;
- *idempotent*: appending a window whose ``window_id`` is already sealed with the *same* header
  returns the existing index and changes nothing; a *different* header under that id raises
  :class:`WindowConflict`;
- *fenced*: a window must start right after the partition's last sealed offset *of the
  partition's current epoch* and carry that epoch, otherwise :class:`StaleWindow` is raised (a
  worker that lost its partition, or that still reads an incarnation of it that is gone, cannot
  seal stale data);
- *atomic*: header, leaf hashes, reading index rows, each device's newest sealed reading
  (``ledger_device_latest``, D46) and the partition's sealed offset are written in one
  transaction.

Epochs (docs/STREAM.md, "Epochs"): Kafka offsets are only meaningful within one incarnation of a
partition.  tansu keeps topics in memory, so a restart starts every partition at offset 0 again;
in production a recreated topic, a rebuilt cluster or an unclean leader election does the same.
The ledger therefore keeps, per partition, the *epoch* its sealed offset belongs to and the hash
of the record at that offset (the *tail*), and :meth:`Ledger.begin_epoch` starts a new epoch
(compare-and-set on the current one, so several workers agree: the ledger is the arbiter).
Offsets sealed in an older epoch never make a record of a newer one look done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from vitalchain.core.integrity import (
    WINDOW_FORMAT,
    blake3_hasher,
    canonical_json,
    header_epoch,
)
from vitalchain.errors import Refused, VitalchainError
from vitalchain.storage.sqldb import LOCK_LEDGER, SqlDb, SqliteDb, connect, install_pg_schema, pg_ddl

HASH_BYTES = 32
# SQLite page cache of a ledger connection, KiB (a ceiling: pages are taken as they are read).
CACHE_KIB = 32 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_windows (
    log_index     INTEGER PRIMARY KEY,
    window_id     TEXT    NOT NULL UNIQUE,
    topic         TEXT    NOT NULL,
    partition     INTEGER NOT NULL,
    first_offset  INTEGER NOT NULL,
    last_offset   INTEGER NOT NULL,
    start_us      INTEGER NOT NULL,
    end_us        INTEGER NOT NULL,
    size          INTEGER NOT NULL,
    root          TEXT    NOT NULL,
    header        TEXT    NOT NULL,
    window_leaf   BLOB    NOT NULL,
    leaf_hashes   BLOB    NOT NULL,
    idle_cut      INTEGER NOT NULL,
    sealed_at_us  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_windows_time ON ledger_windows (start_us, end_us);
CREATE INDEX IF NOT EXISTS ledger_windows_partition
    ON ledger_windows (topic, partition, last_offset);
CREATE TABLE IF NOT EXISTS ledger_readings (
    device_id        TEXT    NOT NULL,
    seq              INTEGER NOT NULL,
    ts_us            INTEGER NOT NULL,
    log_index        INTEGER NOT NULL,
    index_in_window  INTEGER NOT NULL,
    leaf_hash        BLOB    NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_device_latest (
    device_id  TEXT    NOT NULL PRIMARY KEY,
    ts_us      INTEGER NOT NULL,
    seq        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_partitions (
    topic          TEXT    NOT NULL,
    partition      INTEGER NOT NULL,
    sealed_offset  INTEGER NOT NULL,
    last_end_us    INTEGER,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS ledger_epochs (
    topic                TEXT    NOT NULL,
    partition            INTEGER NOT NULL,
    epoch                INTEGER NOT NULL,
    started_at_us        INTEGER NOT NULL,
    reason               TEXT    NOT NULL,
    prior_sealed_offset  INTEGER,
    prior_end_offset     INTEGER,
    PRIMARY KEY (topic, partition, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_epoch_starts (
    topic         TEXT    NOT NULL,
    partition     INTEGER NOT NULL,
    epoch         INTEGER NOT NULL,
    first_offset  INTEGER NOT NULL,
    record_hash   BLOB    NOT NULL,
    noted_at_us   INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, epoch)
) WITHOUT ROWID;
"""

SQLITE_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS ledger_epochs_no_update BEFORE UPDATE ON ledger_epochs
BEGIN SELECT RAISE(ABORT, 'ledger_epochs is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_epochs_no_delete BEFORE DELETE ON ledger_epochs
BEGIN SELECT RAISE(ABORT, 'ledger_epochs is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_epoch_starts_no_update BEFORE UPDATE ON ledger_epoch_starts
BEGIN SELECT RAISE(ABORT, 'ledger_epoch_starts is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_epoch_starts_no_delete BEFORE DELETE ON ledger_epoch_starts
BEGIN SELECT RAISE(ABORT, 'ledger_epoch_starts is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_windows_no_update BEFORE UPDATE ON ledger_windows
BEGIN SELECT RAISE(ABORT, 'ledger_windows is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_windows_no_delete BEFORE DELETE ON ledger_windows
BEGIN SELECT RAISE(ABORT, 'ledger_windows is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_readings_no_update BEFORE UPDATE ON ledger_readings
BEGIN SELECT RAISE(ABORT, 'ledger_readings is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_readings_no_delete BEFORE DELETE ON ledger_readings
BEGIN SELECT RAISE(ABORT, 'ledger_readings is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_device_latest_forward BEFORE UPDATE ON ledger_device_latest
WHEN NEW.device_id <> OLD.device_id OR NEW.ts_us < OLD.ts_us
     OR (NEW.ts_us = OLD.ts_us AND NEW.seq < OLD.seq)
BEGIN SELECT RAISE(ABORT, 'ledger_device_latest only moves forward'); END;
CREATE TRIGGER IF NOT EXISTS ledger_device_latest_no_delete BEFORE DELETE ON ledger_device_latest
BEGIN SELECT RAISE(ABORT, 'ledger_device_latest only moves forward'); END;
"""

# Ledgers sealed before D46 have a second index on the reading index, (device_id, ts_us): one
# more B-tree insert per reading.  Its two readers are served otherwise now (newest_sealed from
# ledger_device_latest, locate_by_time from the primary key); on open it is dropped, after
# ledger_device_latest is filled from it (docs/DECISIONS.md D46).
OLD_TIME_INDEX = "ledger_readings_time"
# The device's newest sealed reading: latest ts_us, highest seq among equals.  Forward only.
LATEST_UPSERT = (
    "INSERT INTO ledger_device_latest (device_id, ts_us, seq) {source} "
    "ON CONFLICT (device_id) DO UPDATE SET ts_us = excluded.ts_us, seq = excluded.seq "
    "WHERE excluded.ts_us > ledger_device_latest.ts_us OR (excluded.ts_us = "
    "ledger_device_latest.ts_us AND excluded.seq > ledger_device_latest.seq)")
# From an existing reading index (the migration): each device's latest ts_us, its highest seq.
# ``WHERE true``: SQLite's parser needs a WHERE before an upsert's ON CONFLICT after a join.
LATEST_FILL = LATEST_UPSERT.format(source=(
    "SELECT r.device_id, r.ts_us, MAX(r.seq) FROM ledger_readings r JOIN (SELECT device_id, "
    "MAX(ts_us) AS ts_us FROM ledger_readings GROUP BY device_id) m ON m.device_id = "
    "r.device_id AND m.ts_us = r.ts_us WHERE true GROUP BY r.device_id, r.ts_us"))

APPEND_ONLY_TABLES = ("ledger_windows", "ledger_readings", "ledger_epochs", "ledger_epoch_starts")
# PostgreSQL: one statement-level trigger per append-only table refuses UPDATE, DELETE and
# TRUNCATE (even by the owner), and the workers' role may only read and insert there; the
# partition positions move (sealed offset, tail), so that table also allows UPDATE.
WORKERS_ROLE = "vitalchain_workers"
PG_APPEND_ONLY = [
    "CREATE OR REPLACE FUNCTION vitalchain_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$",
    *(f"CREATE OR REPLACE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {t} "
      "FOR EACH STATEMENT EXECUTE FUNCTION vitalchain_append_only()" for t in APPEND_ONLY_TABLES),
]
# ledger_device_latest moves forward only: no DELETE or TRUNCATE, no UPDATE to an older reading.
PG_LATEST = [
    "CREATE OR REPLACE FUNCTION vitalchain_latest_forward() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN IF NEW.device_id <> OLD.device_id OR NEW.ts_us < OLD.ts_us OR (NEW.ts_us = "
    "OLD.ts_us AND NEW.seq < OLD.seq) THEN RAISE EXCEPTION 'ledger_device_latest only moves "
    "forward'; END IF; RETURN NEW; END $$",
    "CREATE OR REPLACE TRIGGER ledger_device_latest_forward BEFORE UPDATE ON "
    "ledger_device_latest FOR EACH ROW EXECUTE FUNCTION vitalchain_latest_forward()",
    "CREATE OR REPLACE TRIGGER ledger_device_latest_append_only BEFORE DELETE OR TRUNCATE ON "
    "ledger_device_latest FOR EACH STATEMENT EXECUTE FUNCTION vitalchain_append_only()",
]
PG_ROLE = [
    # A role the database user may not be allowed to create (no CREATEROLE): then no grants.
    f"""DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{WORKERS_ROLE}') THEN
    BEGIN CREATE ROLE {WORKERS_ROLE} NOLOGIN;
    EXCEPTION WHEN duplicate_object OR insufficient_privilege THEN NULL; END;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{WORKERS_ROLE}') THEN
    GRANT SELECT, INSERT ON {', '.join(APPEND_ONLY_TABLES)} TO {WORKERS_ROLE};
    GRANT SELECT, INSERT, UPDATE ON ledger_partitions, ledger_device_latest TO {WORKERS_ROLE};
  END IF;
END $$""",
]


def pg_epoch_starts_migration() -> list[str]:
    """A PostgreSQL ledger installed before epoch starts were noted (D56): the table, its
    append-only trigger and the workers' grants (once, under the schema lock)."""
    table = next(st for st in SCHEMA.split(";\n") if "ledger_epoch_starts" in st)
    trigger = next(st for st in PG_APPEND_ONLY if " ledger_epoch_starts_append_only " in st)
    return [pg_ddl(table), PG_APPEND_ONLY[0], trigger, *PG_ROLE]


# Columns added to ledger_partitions after the first release; added on open when missing, so a
# ledger sealed before epochs existed keeps working (all its windows are epoch 0).
PARTITION_COLUMNS = (("epoch", "INTEGER NOT NULL DEFAULT 0"), ("tail_hash", "BLOB"))


def pg_schema() -> list[str]:
    """The ledger's tables, triggers and grants on PostgreSQL (installed once per database)."""
    tables = [pg_ddl(st) for st in SCHEMA.split(";\n") if st.strip()]
    columns = [f"ALTER TABLE ledger_partitions ADD COLUMN IF NOT EXISTS {name} {pg_ddl(decl)}"
               for name, decl in PARTITION_COLUMNS]
    return [*tables, *columns, f"DROP INDEX IF EXISTS {OLD_TIME_INDEX}", *PG_APPEND_ONLY,
            *PG_LATEST, *PG_ROLE]


def pg_latest_migration() -> list[str]:
    """A PostgreSQL ledger installed before D46 to the new layout (once, under the schema lock):
    ``ledger_device_latest`` created and filled from the time index, which is then dropped."""
    table = next(st for st in SCHEMA.split(";\n") if "ledger_device_latest" in st)
    return [pg_ddl(table), LATEST_FILL, f"DROP INDEX IF EXISTS {OLD_TIME_INDEX}",
            *PG_APPEND_ONLY[:1], *PG_LATEST, *PG_ROLE]


# The reading index's columns (a ledger from before D46 also has window_id, last here).
READING_COLUMNS = ("device_id", "seq", "ts_us", "log_index", "index_in_window", "leaf_hash",
                   "window_id")


# A reading row's window id, in a query joining ``ledger_readings r LEFT JOIN ledger_windows w
# ON w.log_index = r.log_index``: a left join, so a row whose window is gone (an altered ledger)
# is still listed, under a name that says so.
WINDOW_OF_ROW = "COALESCE(w.window_id, 'no-window-' || r.log_index)"


class LedgerError(VitalchainError):
    """Base class of refusals by the ledger."""


class WindowConflict(LedgerError, Refused):
    """A different header (or a reading) is already sealed under the same identity."""


class StaleWindow(LedgerError, Refused):
    """The window does not start right after the partition's last sealed offset."""


class ReadingIndexRow(NamedTuple):
    """One reading's place in its window (identity and hash only: no vitals).

    A named tuple, not a frozen dataclass: the sealer builds one per reading, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost about 1 µs of it."""

    device_id: str
    seq: int
    ts_us: int
    index_in_window: int
    leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class PartitionPosition:
    """Where a partition stands: its current epoch and what is sealed in it.

    ``sealed_offset``/``tail_hash`` are None while nothing is sealed in the current epoch;
    ``tail_hash`` is also None for ranges sealed before tails were recorded (then only the
    "offsets went backwards" rule can detect a new incarnation)."""

    epoch: int
    sealed_offset: int | None
    tail_hash: bytes | None


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """One start of a new epoch: why, and what the previous epoch had sealed and seen."""

    topic: str
    partition: int
    epoch: int
    started_at_us: int
    reason: str
    prior_sealed_offset: int | None
    prior_end_offset: int | None

    @property
    def unsealed_records(self) -> int | None:
        """Records the old incarnation held beyond what was sealed, as far as the stream saw
        (an upper bound on readings lost there: duplicates and rejected records count too)."""
        if self.prior_end_offset is None:
            return None
        return max(0, self.prior_end_offset - (self.prior_sealed_offset
                                               if self.prior_sealed_offset is not None else -1) - 1)


@dataclass(frozen=True, slots=True)
class EpochStart:
    """The first record a worker read in an epoch of a partition (``record_hash`` as a tail's):
    the incarnation check of a partition that has nothing sealed in its epoch yet."""

    offset: int
    record_hash: bytes


EPOCH_COLUMNS = "topic, partition, epoch, started_at_us, reason, prior_sealed_offset, prior_end_offset"


def epoch_record(row: Sequence[Any]) -> EpochRecord:
    """An :class:`EpochRecord` from a row of ``SELECT {EPOCH_COLUMNS} FROM ledger_epochs``."""
    return EpochRecord(str(row[0]), int(row[1]), int(row[2]), int(row[3]), str(row[4]),
                       None if row[5] is None else int(row[5]), None if row[6] is None else int(row[6]))


@dataclass(frozen=True, slots=True)
class SealedWindow:
    log_index: int
    header: dict[str, Any]
    leaf_hashes: list[bytes]
    window_leaf: bytes
    idle_cut: bool
    topic: str

    @property
    def window_id(self) -> str:
        return str(self.header["window_id"])


@dataclass(frozen=True, slots=True)
class ReadingLocation:
    device_id: str
    seq: int
    window_id: str
    log_index: int
    index_in_window: int
    leaf_hash: bytes
    ts_us: int


def _split_hashes(blob: bytes) -> list[bytes]:
    return [blob[i:i + HASH_BYTES] for i in range(0, len(blob), HASH_BYTES)]


def _checked_header(header: Mapping[str, Any], partition: int) -> tuple[dict[str, Any], str, int]:
    """The fields every appended window must carry, checked before any write."""
    header = dict(header)
    window_id = header.get("window_id")
    if not isinstance(window_id, str) or not window_id:
        raise ValueError("header has no window_id")
    if header.get("partition") != partition:
        raise ValueError(f"header partition {header.get('partition')!r} != {partition}")
    _check_int("first_offset", header.get("first_offset"))
    _check_int("last_offset", header.get("last_offset"))
    return header, window_id, _check_int("size", header.get("size"))


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


class Ledger:
    """The window log in one SQLite file or one PostgreSQL database (``target``: a path or a
    ``postgresql://`` URL); safe to open from several processes at once."""

    def __init__(self, target: str | Path, busy_timeout_s: float = 30.0) -> None:
        self._db: SqlDb = connect(target, busy_timeout_s=busy_timeout_s)
        self.target = target
        self.path = Path(target) if isinstance(self._db, SqliteDb) else None
        self._lock = self._db.lock
        if not isinstance(self._db, SqliteDb):
            install_pg_schema(self._db, "ledger_partitions", pg_schema())
            install_pg_schema(self._db, "ledger_device_latest", pg_latest_migration())
            install_pg_schema(self._db, "ledger_epoch_starts", pg_epoch_starts_migration())
            self._rows_name_window = self._db.one(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'ledger_readings' AND column_name = 'window_id'") is not None
            return
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        # The reading index outgrows SQLite's default 2 MB page cache within minutes at
        # thousands of readings/s; each window's inserts then re-read index pages from the file.
        self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        with self._db.write(LOCK_LEDGER):
            for statement in (SCHEMA + SQLITE_TRIGGERS).split(";\n"):
                if statement.strip():
                    self._db.execute(statement)
            have = {r[1] for r in self._db.execute("PRAGMA table_info(ledger_partitions)")}
            for name, decl in PARTITION_COLUMNS:
                if name not in have:
                    self._db.execute(f"ALTER TABLE ledger_partitions ADD COLUMN {name} {decl}")
            if self._db.one("SELECT 1 FROM sqlite_master WHERE type='index' AND name=?",
                            (OLD_TIME_INDEX,)) is not None:
                # A ledger from before D46 (or one an older worker opened since): the
                # upsert only moves forward, so filling again after such a worker is safe.
                self._db.execute(LATEST_FILL)
                self._db.execute(f"DROP INDEX {OLD_TIME_INDEX}")
            self._rows_name_window = "window_id" in {
                r[1] for r in self._db.execute("PRAGMA table_info(ledger_readings)")}

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.dialect

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self._db.one(sql, args)

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.all(sql, args)

    # --- partitions -----------------------------------------------------------------------
    def last_sealed_offset(self, topic: str, partition: int) -> int | None:
        """Highest offset of ``(topic, partition)`` done (sealed or dropped) in its current
        epoch, or None when nothing is."""
        return self.position(topic, partition).sealed_offset

    def position(self, topic: str, partition: int) -> PartitionPosition:
        with self._lock:
            return self._position_locked(topic, partition)

    def _position_locked(self, topic: str, partition: int) -> PartitionPosition:
        epoch = self._epoch_locked(topic, partition)
        row = self._db.execute("SELECT sealed_offset, epoch, tail_hash FROM ledger_partitions "
                               "WHERE topic=? AND partition=?", (topic, partition)).fetchone()
        if row is None or int(row[1]) != epoch:
            return PartitionPosition(epoch, None, None)
        return PartitionPosition(epoch, int(row[0]), None if row[2] is None else bytes(row[2]))

    def _epoch_locked(self, topic: str, partition: int) -> int:
        row = self._db.execute("SELECT MAX(epoch) FROM ledger_epochs WHERE topic=? AND "
                               "partition=?", (topic, partition)).fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def current_epoch(self, topic: str, partition: int) -> int:
        with self._lock:
            return self._epoch_locked(topic, partition)

    def begin_epoch(self, topic: str, partition: int, from_epoch: int, reason: str,
                    prior_end_offset: int | None = None) -> int:
        """Start epoch ``from_epoch + 1`` of the partition unless another worker already moved
        past ``from_epoch``; returns the partition's current epoch either way.

        Compare-and-set in one transaction, so workers that noticed the same new incarnation
        start exactly one new epoch, and a worker acting on an old observation changes nothing.
        ``prior_end_offset`` is the log end the caller last saw in the old incarnation (what
        was in Kafka beyond the sealed offset is lost with it; the audit reports the readings).
        """
        with self._db.write(LOCK_LEDGER):
            current = self._position_locked(topic, partition)
            if current.epoch != from_epoch:
                return current.epoch
            self._db.execute(
                "INSERT INTO ledger_epochs (topic, partition, epoch, started_at_us, reason, "
                "prior_sealed_offset, prior_end_offset) VALUES (?,?,?,?,?,?,?)",
                (topic, partition, from_epoch + 1, time.time_ns() // 1000, reason,
                 current.sealed_offset, prior_end_offset))
            return from_epoch + 1

    def epoch_start(self, topic: str, partition: int, epoch: int) -> EpochStart | None:
        """The record the partition's ``epoch`` was first read from, if a worker noted one."""
        with self._lock:
            return self._epoch_start_locked(topic, partition, epoch)

    def _epoch_start_locked(self, topic: str, partition: int, epoch: int) -> EpochStart | None:
        row = self._db.execute("SELECT first_offset, record_hash FROM ledger_epoch_starts WHERE "
                               "topic=? AND partition=? AND epoch=?",
                               (topic, partition, epoch)).fetchone()
        return None if row is None else EpochStart(int(row[0]), bytes(row[1]))

    def note_epoch_start(self, topic: str, partition: int, epoch: int, first_offset: int,
                         record_hash: bytes) -> bool:
        """Note the first record read in ``epoch`` of the partition, before anything read from
        it is stored; True if that is the start now noted (ours, or the same one noted before).

        False when the partition moved to another epoch or a different start is noted: the
        caller's view is stale, or the incarnation changed while nothing was sealed.  Without
        this note, a broker restart before a partition's first seal would go unseen: its new
        records would be sealed under the window ids the lost ones were stored under (D56).
        """
        _check_int("first_offset", first_offset)
        with self._db.write(LOCK_LEDGER):
            if self._epoch_locked(topic, partition) != epoch:
                return False
            noted = self._epoch_start_locked(topic, partition, epoch)
            if noted is not None:
                return noted == EpochStart(first_offset, record_hash)
            self._db.execute(
                "INSERT INTO ledger_epoch_starts (topic, partition, epoch, first_offset, "
                "record_hash, noted_at_us) VALUES (?,?,?,?,?,?)",
                (topic, partition, epoch, first_offset, record_hash, time.time_ns() // 1000))
            return True

    def epochs(self, topic: str | None = None) -> list[EpochRecord]:
        """Every epoch start (epoch 0 is implicit), by topic, partition and epoch."""
        where, args = ("WHERE topic=?", (topic,)) if topic is not None else ("", ())
        rows = self._all(f"SELECT {EPOCH_COLUMNS} FROM ledger_epochs {where} "
                         "ORDER BY topic, partition, epoch", args)
        return [epoch_record(r) for r in rows]

    def previous_window_end_us(self, topic: str, partition: int) -> int | None:
        """``end_us`` of the partition's last sealed window: readings before it are late."""
        row = self._one("SELECT last_end_us FROM ledger_partitions WHERE topic=? AND partition=?",
                        (topic, partition))
        return None if row is None or row[0] is None else int(row[0])

    def last_window(self, topic: str, partition: int) -> SealedWindow | None:
        # By log index, not offset: a later epoch's windows start at low offsets again.
        row = self._one("SELECT log_index FROM ledger_windows WHERE topic=? AND partition=? "
                        "ORDER BY log_index DESC LIMIT 1", (topic, partition))
        return None if row is None else self.window_by_index(int(row[0]))

    def advance_offset(self, topic: str, partition: int, first_offset: int,
                       last_offset: int, epoch: int = 0, tail_hash: bytes | None = None) -> None:
        """Mark a range that held no sealable reading (only duplicates/conflicts) as done.

        Fenced like :meth:`append_window` (offset and epoch); re-marking the same range is a
        no-op.  ``tail_hash`` identifies the record at ``last_offset`` (see :meth:`position`).
        """
        _check_int("first_offset", first_offset)
        _check_int("last_offset", last_offset)
        with self._db.write(LOCK_LEDGER):
            position = self._position_locked(topic, partition)
            self._check_epoch(topic, partition, epoch, position.epoch,
                              f"range {first_offset}..{last_offset}")
            sealed = position.sealed_offset
            if sealed is not None and sealed >= last_offset:
                return
            if sealed is not None and first_offset != sealed + 1:
                raise StaleWindow(f"range {first_offset}..{last_offset} of {topic}[{partition}] "
                                  f"does not follow sealed offset {sealed}")
            self._db.execute(
                "INSERT INTO ledger_partitions (topic, partition, sealed_offset, epoch, "
                "tail_hash) VALUES (?, ?, ?, ?, ?) ON CONFLICT (topic, partition) "
                "DO UPDATE SET sealed_offset=excluded.sealed_offset, epoch=excluded.epoch, "
                "tail_hash=excluded.tail_hash",
                (topic, partition, last_offset, epoch, tail_hash))

    @staticmethod
    def _check_epoch(topic: str, partition: int, epoch: int, current: int, what: str) -> None:
        if epoch != current:
            raise StaleWindow(f"{what} of {topic}[{partition}] belongs to epoch {epoch}, the "
                              f"partition is in epoch {current}")

    # --- appending --------------------------------------------------------------------------
    def append_window(self, topic: str, partition: int, header: Mapping[str, Any],
                      leaf_hashes: Sequence[bytes], readings: Sequence[ReadingIndexRow],
                      idle_cut: bool, tail_hash: bytes | None = None) -> int:
        """Seal one window; returns its log index (see the module docstring for guarantees).

        The window's epoch is its header's (``header_epoch``); ``tail_hash`` identifies the
        Kafka record at its ``last_offset``, so a later worker can tell whether the partition it
        reads is still the incarnation these offsets came from."""
        header, window_id, size = _checked_header(header, partition)
        if len(leaf_hashes) != size or len(readings) != size:
            raise ValueError(f"window {window_id}: size {size} but {len(leaf_hashes)} leaf hashes "
                             f"and {len(readings)} index rows")
        for i, (leaf, row) in enumerate(zip(leaf_hashes, readings, strict=True)):
            if len(leaf) != HASH_BYTES or row.leaf_hash != leaf or row.index_in_window != i:
                raise ValueError(f"window {window_id}: index row {i} does not match its leaf")
        return self._append(topic, partition, header, leaf_hashes, readings, idle_cut, tail_hash)

    def append_entry_window(self, topic: str, partition: int, header: Mapping[str, Any],
                            leaf_hashes: Sequence[bytes]) -> int:
        """Seal a window of non-reading entries (the API's access log) into the same log.

        Same guarantees as :meth:`append_window` (append-only, idempotent, fenced on
        ``(topic, partition)``, atomic) but no reading index rows: the entries are not readings,
        so ``locate``/``reading_count`` never see them.  Reading windows cannot come this way.
        """
        if header.get("format") == WINDOW_FORMAT:
            raise ValueError("reading windows must be appended with append_window")
        header, window_id, size = _checked_header(header, partition)
        if size < 1 or len(leaf_hashes) != size or any(len(h) != HASH_BYTES for h in leaf_hashes):
            raise ValueError(f"window {window_id}: size {size} but {len(leaf_hashes)} leaf hashes")
        return self._append(topic, partition, header, leaf_hashes, (), False, None)

    def _append(self, topic: str, partition: int, header: dict[str, Any],
                leaf_hashes: Sequence[bytes], readings: Sequence[ReadingIndexRow],
                idle_cut: bool, tail_hash: bytes | None) -> int:
        """One write transaction around the append (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL:
        the ledger's advisory lock), so concurrent writers queue and log indexes stay dense."""
        canonical = canonical_json(header)
        header_json = canonical.decode()
        # window_leaf_hash(header), from the JCS bytes just made: a header names every device
        # of its window (thousands), so its canonical text is not worth making twice.
        window_leaf = blake3_hasher.leaf(canonical)
        with self._db.write(LOCK_LEDGER):
            return self._append_locked(topic, partition, header, header_json, window_leaf,
                                       leaf_hashes, readings, idle_cut, tail_hash)

    def _append_locked(self, topic: str, partition: int, header: dict[str, Any],
                       header_json: str, window_leaf: bytes, leaf_hashes: Sequence[bytes],
                       readings: Sequence[ReadingIndexRow], idle_cut: bool,
                       tail_hash: bytes | None) -> int:
        window_id = header["window_id"]
        first_offset, last_offset = header["first_offset"], header["last_offset"]
        existing = self._db.execute(
            "SELECT log_index, header FROM ledger_windows WHERE window_id=?",
            (window_id,)).fetchone()
        if existing is not None:
            if existing[1] == header_json:
                return int(existing[0])
            raise WindowConflict(f"window {window_id} is already sealed with a different header")
        epoch = header_epoch(header)
        position = self._position_locked(topic, partition)
        self._check_epoch(topic, partition, epoch, position.epoch, f"window {window_id}")
        sealed = position.sealed_offset
        if sealed is not None and first_offset != sealed + 1:
            raise StaleWindow(f"window {window_id} of {topic}[{partition}] does not follow the "
                              f"sealed offset {sealed}")
        row = self._db.execute("SELECT COALESCE(MAX(log_index) + 1, 0) FROM ledger_windows")
        index = int(row.fetchone()[0])
        self._db.execute(
            "INSERT INTO ledger_windows (log_index, window_id, topic, partition, first_offset, "
            "last_offset, start_us, end_us, size, root, header, window_leaf, leaf_hashes, "
            "idle_cut, sealed_at_us) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (index, window_id, topic, partition, first_offset, last_offset,
             int(header["start_us"]), int(header["end_us"]), int(header["size"]),
             str(header["root"]), header_json, window_leaf, b"".join(leaf_hashes),
             1 if idle_cut else 0, time.time_ns() // 1000))
        # In primary-key order (device, seq), not window order: a window interleaves thousands
        # of devices, and inserting its rows in key order walks the index B-trees once instead
        # of jumping between their pages (measured: 13-15 -> 7-8 µs per row on a ledger of
        # 600,000 readings; docs/PERFORMANCE.md, "Stream worker: one pass per reading, the
        # ledger's index in key order").
        # The rows' values, index_in_window included, do not depend on the order.
        # No window_id per row (D46): the log index names the window; a ledger from before
        # still has the column, NOT NULL, and gets it.
        if self._rows_name_window:
            rows = sorted([(r[0], r[1], r[2], index, r[3], r[4], window_id) for r in readings])
        else:
            rows = sorted([(r[0], r[1], r[2], index, r[3], r[4]) for r in readings])
        try:
            if rows:  # none in an entry window
                self._db.insert_rows("ledger_readings", READING_COLUMNS[:len(rows[0])], rows)
        except self._db.integrity_errors as exc:
            raise WindowConflict(f"window {window_id}: a reading is already sealed in another "
                                 f"window ({exc})") from exc
        self._advance_latest(rows)
        self._db.execute(
            "INSERT INTO ledger_partitions (topic, partition, sealed_offset, last_end_us, epoch, "
            "tail_hash) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE SET "
            "sealed_offset=excluded.sealed_offset, last_end_us=excluded.last_end_us, "
            "epoch=excluded.epoch, tail_hash=excluded.tail_hash",
            (topic, partition, last_offset, int(header["end_us"]), epoch, tail_hash))
        return index

    def _advance_latest(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Move each device's newest sealed reading forward to this window's, if newer: one
        upsert per device of the window, not one index entry per reading (D46).  ``rows`` are
        the window's index rows in key order, so each device's last one has its highest seq."""
        best: dict[str, tuple[int, int]] = {}
        for device, seq, ts, *_ in rows:
            have = best.get(device)
            if have is None or ts >= have[0]:
                best[device] = (ts, seq)
        if best:
            self._db.executemany(LATEST_UPSERT.format(source="VALUES (?, ?, ?)"),
                                 [(d, ts, seq) for d, (ts, seq) in best.items()])

    # --- reading the log --------------------------------------------------------------------
    def log_size(self) -> int:
        row = self._one("SELECT COUNT(*) FROM ledger_windows")
        return int(row[0]) if row else 0

    def leaf_hashes(self, start: int = 0, end: int | None = None) -> list[bytes]:
        """Window leaf hashes of log indices ``start <= i < end`` (to the end of the log if None),
        in log order: a mirror reads only what was appended since it last looked."""
        if end is None:
            rows = self._all("SELECT window_leaf FROM ledger_windows WHERE log_index >= ? "
                             "ORDER BY log_index", (_check_int("start", start),))
        else:
            rows = self._all("SELECT window_leaf FROM ledger_windows WHERE log_index >= ? AND log_index < ? "
                             "ORDER BY log_index", (_check_int("start", start), _check_int("end", end)))
        return [bytes(r[0]) for r in rows]

    _WINDOW_COLUMNS = "log_index, header, leaf_hashes, window_leaf, idle_cut, topic"

    def _window(self, row: tuple[Any, ...] | None) -> SealedWindow | None:
        if row is None:
            return None
        return SealedWindow(log_index=int(row[0]), header=json.loads(row[1]),
                            leaf_hashes=_split_hashes(bytes(row[2])), window_leaf=bytes(row[3]),
                            idle_cut=bool(row[4]), topic=str(row[5]))

    def window_by_index(self, index: int) -> SealedWindow | None:
        return self._window(self._one(
            f"SELECT {self._WINDOW_COLUMNS} FROM ledger_windows WHERE log_index=?", (index,)))

    def window_by_id(self, window_id: str) -> SealedWindow | None:
        return self._window(self._one(
            f"SELECT {self._WINDOW_COLUMNS} FROM ledger_windows WHERE window_id=?", (window_id,)))

    def windows(self, start_us: int | None = None, end_us: int | None = None,
                topic: str | None = None) -> Iterator[SealedWindow]:
        """Sealed windows in log order whose time span overlaps ``[start_us, end_us]``."""
        clauses, args = [], []
        if start_us is not None:
            clauses.append("end_us >= ?")
            args.append(start_us)
        if end_us is not None:
            clauses.append("start_us <= ?")
            args.append(end_us)
        if topic is not None:
            clauses.append("topic = ?")
            args.append(topic)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._all(f"SELECT {self._WINDOW_COLUMNS} FROM ledger_windows {where} "
                         "ORDER BY log_index", args)
        for row in rows:
            window = self._window(row)
            assert window is not None
            yield window

    # --- reading index ------------------------------------------------------------------------
    def sealed_leaf(self, device_id: str, seq: int) -> bytes | None:
        row = self._one("SELECT leaf_hash FROM ledger_readings WHERE device_id=? AND seq=?",
                        (device_id, seq))
        return None if row is None else bytes(row[0])

    def max_sealed_seq(self, device_id: str) -> int | None:
        """The highest seq of ``device_id`` in the reading index (None if none is sealed).

        The stream loads it once per device and partition claim: a device's seqs only grow, so
        a reading above it cannot be sealed and needs no :meth:`sealed_leaf` round trip."""
        row = self._one("SELECT MAX(seq) FROM ledger_readings WHERE device_id=?", (device_id,))
        return None if row is None or row[0] is None else int(row[0])

    # The window's id from ledger_windows by log index (its primary key): the reading index
    # rows do not repeat it (D46).
    _LOCATE = (f"SELECT r.device_id, r.seq, {WINDOW_OF_ROW}, r.log_index, r.index_in_window, "
               "r.leaf_hash, r.ts_us FROM ledger_readings r LEFT JOIN ledger_windows w "
               "ON w.log_index = r.log_index")

    def _location(self, row: tuple[Any, ...]) -> ReadingLocation:
        return ReadingLocation(device_id=row[0], seq=int(row[1]), window_id=row[2],
                               log_index=int(row[3]), index_in_window=int(row[4]),
                               leaf_hash=bytes(row[5]), ts_us=int(row[6]))

    def locate(self, device_id: str, seq: int) -> ReadingLocation | None:
        row = self._one(f"{self._LOCATE} WHERE r.device_id=? AND r.seq=?", (device_id, seq))
        return None if row is None else self._location(row)

    def locate_many(self, keys: Iterable[tuple[str, int]],
                    chunk: int = 500) -> dict[tuple[str, int], ReadingLocation]:
        """Index rows of many readings at once, keyed by ``(device_id, seq)``; absent ones omitted.

        Verified reads look up thousands of readings per request: one primary-key ``IN`` query
        per device and ``chunk`` seqs instead of one query per reading.  An exact ``IN`` list,
        not ``BETWEEN min AND max``, so one forged point with a huge seq cannot make a request
        read a device's whole history.  Seqs outside SQLite's integer range cannot be sealed
        and are skipped.
        """
        by_device: dict[str, set[int]] = {}
        for device_id, seq in keys:
            if 0 <= seq <= 2**63 - 1:
                by_device.setdefault(device_id, set()).add(seq)
        found: dict[tuple[str, int], ReadingLocation] = {}
        for device_id, seqs in by_device.items():
            ordered = sorted(seqs)
            for start in range(0, len(ordered), chunk):
                part = ordered[start:start + chunk]
                rows = self._all(f"{self._LOCATE} WHERE r.device_id=? "
                                 f"AND r.seq IN ({','.join('?' * len(part))})",
                                 (device_id, *part))
                for row in rows:
                    loc = self._location(row)
                    found[(loc.device_id, loc.seq)] = loc
        return found

    def newest_sealed(self, device_id: str) -> ReadingLocation | None:
        """The device's sealed reading with the latest ``ts_us`` (highest seq among equals).

        Two primary-key lookups: ``ledger_device_latest`` names it (kept by every append in the
        same transaction), the reading index holds it (D46)."""
        row = self._one(f"{self._LOCATE} JOIN ledger_device_latest l ON l.device_id = "
                        "r.device_id AND l.seq = r.seq WHERE l.device_id=?", (device_id,))
        return None if row is None else self._location(row)

    def locate_by_time(self, device_id: str, ts_us: int) -> list[ReadingLocation]:
        """All sealed readings of a device stamped exactly ``ts_us`` (usually zero or one).

        Reads the device's part of the reading index (its primary key's prefix): there is no
        time index since D46, and asking by time is the CLI's convenience (the API and bundles
        ask by seq), so one scan of a device's rows is cheaper than an index entry per reading."""
        rows = self._all(f"{self._LOCATE} WHERE r.device_id=? AND r.ts_us=? ORDER BY r.seq",
                         (device_id, ts_us))
        return [self._location(r) for r in rows]

    def reading_count(self, device_prefix: str | None = None) -> int:
        """Readings in the reading index (at most one per device and seq: its primary key), or
        only those of devices whose id starts with ``device_prefix`` (a bench's own fleet)."""
        if device_prefix is None:
            row = self._one("SELECT COUNT(*) FROM ledger_readings")
        else:
            row = self._one("SELECT COUNT(*) FROM ledger_readings "
                            "WHERE substr(device_id, 1, ?) = ?",
                            (len(device_prefix), device_prefix))
        return int(row[0]) if row else 0
