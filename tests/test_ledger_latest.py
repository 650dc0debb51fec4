"""The reading index without its time index (D46): each device's newest sealed reading kept in
``ledger_device_latest`` (forward only), proofs by time from the primary key, and ledgers sealed
before D46 migrated on open.  Runs on SQLite and PostgreSQL (``ledger_target``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.test_ledger import KEY, T0
from vitalchain.core.integrity import build_window_header, canonical_reading, reading_leaf_hash
from vitalchain.storage.ledger import Ledger, ReadingIndexRow
from vitalchain.storage.ledger_view import LedgerView
from vitalchain.storage.sqldb import connect, is_postgres_url, pg_ddl

OLD_INDEX = "CREATE INDEX ledger_readings_time ON ledger_readings (device_id, ts_us)"
# The reading index as sealed before D46: each row also names its window.
OLD_READINGS = """CREATE TABLE ledger_readings (
    device_id        TEXT    NOT NULL,
    seq              INTEGER NOT NULL,
    ts_us            INTEGER NOT NULL,
    window_id        TEXT    NOT NULL,
    log_index        INTEGER NOT NULL,
    index_in_window  INTEGER NOT NULL,
    leaf_hash        BLOB    NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID"""


def stamped_window(first: int, last: int, readings: list[tuple[str, int, int]]):
    """A window of readings given as ``(device, seq, ts_us)``, in that window order."""
    canon = [canonical_reading({"device_id": d, "patient_id": "p", "seq": seq, "ts_us": ts,
                                "vitals": {"hr": 70, "spo2": 97, "rr": 14, "temp_c": 36.6,
                                           "sys": 120, "dia": 80}}, KEY) for d, seq, ts in readings]
    leaves = [reading_leaf_hash(r) for r in canon]
    header = build_window_header(canon, partition=0, first_offset=first, last_offset=last,
                                 salt_key_id="k", leaf_hashes=leaves)
    rows = [ReadingIndexRow(r["device_id"], r["seq"], r["ts_us"], i, leaf)
            for i, (r, leaf) in enumerate(zip(canon, leaves, strict=True))]
    return header, leaves, rows


def append(ledger: Ledger, first: int, last: int, readings: list[tuple[str, int, int]]) -> int:
    h, leaves, rows = stamped_window(first, last, readings)
    return ledger.append_window("raw", 0, h, leaves, rows, idle_cut=False)


def test_newest_is_by_time_then_seq_across_windows_and_clock_steps(ledger_target) -> None:
    ledger = Ledger(ledger_target)
    assert ledger.newest_sealed("a") is None
    # a: its clock steps back at seq 3 (newest by time stays seq 2); b: a tie on ts_us.
    append(ledger, 0, 1, [("a", 1, T0 + 10), ("b", 1, T0 + 5), ("a", 2, T0 + 20),
                          ("a", 3, T0 + 15), ("b", 2, T0 + 5)])
    assert (ledger.newest_sealed("a").seq, ledger.newest_sealed("b").seq) == (2, 2)
    # Next window: a's later reading is still older than seq 2; b ties again, higher seq wins.
    append(ledger, 2, 2, [("a", 4, T0 + 18), ("b", 3, T0 + 5)])
    newest_a, newest_b = ledger.newest_sealed("a"), ledger.newest_sealed("b")
    assert (newest_a.seq, newest_a.ts_us, newest_a.log_index) == (2, T0 + 20, 0)
    assert (newest_b.seq, newest_b.log_index) == (3, 1)
    append(ledger, 3, 3, [("a", 5, T0 + 30)])
    assert ledger.newest_sealed("a").seq == 5
    assert [x.seq for x in ledger.locate_by_time("b", T0 + 5)] == [1, 2, 3]
    assert [x.seq for x in ledger.locate_by_time("a", T0 + 15)] == [3]
    assert ledger.locate_by_time("a", T0 + 16) == []
    # What a second connection sees (the rows are in the append's transaction).
    assert Ledger(ledger_target).newest_sealed("a").seq == 5


@pytest.mark.parametrize("statement", [
    "UPDATE ledger_device_latest SET seq = 1 WHERE device_id = 'a'",
    "UPDATE ledger_device_latest SET ts_us = ts_us - 1",
    "UPDATE ledger_device_latest SET device_id = 'z'",
    "DELETE FROM ledger_device_latest"])
def test_latest_moves_forward_only(ledger_target, statement: str) -> None:
    ledger = Ledger(ledger_target)
    append(ledger, 0, 0, [("a", 1, T0), ("a", 2, T0 + 10)])
    with pytest.raises(Exception, match=r"only moves forward|append-only"):
        ledger._db.execute(statement)
    assert ledger.newest_sealed("a").seq == 2


def test_a_ledger_sealed_before_d45_is_migrated_on_open(ledger_target) -> None:
    ledger = Ledger(ledger_target)
    append(ledger, 0, 1, [("a", 1, T0 + 10), ("a", 2, T0 + 20), ("b", 7, T0 + 3),
                          ("a", 3, T0 + 15)])
    ledger.close()
    # The layout before D46: the (device_id, ts_us) index, no ledger_device_latest.
    db = connect(ledger_target)
    db.execute("DROP TABLE ledger_device_latest")
    db.execute(OLD_INDEX)
    db.close()
    migrated = Ledger(ledger_target)
    assert (migrated.newest_sealed("a").seq, migrated.newest_sealed("b").seq) == (2, 7)
    assert not _has_time_index(ledger_target)
    append(migrated, 2, 2, [("a", 4, T0 + 40), ("c", 1, T0)])
    assert [migrated.newest_sealed(d).seq for d in "abc"] == [4, 7, 1]
    assert migrated.reading_count() == 6
    migrated.close()


def test_an_older_worker_sealing_after_the_migration_is_caught_up_on_open(tmp_path: Path) -> None:
    """An older worker recreates the time index and seals without moving the latest rows; the
    next open by this code fills them forward again (never backward) and drops the index."""
    target = tmp_path / "l.sqlite"
    ledger = Ledger(target)
    append(ledger, 0, 0, [("a", 1, T0 + 10)])
    ledger.close()
    h, leaves, rows = stamped_window(1, 1, [("a", 2, T0 + 5), ("a", 3, T0 + 50)])
    raw = sqlite3.connect(target)
    raw.execute(OLD_INDEX)
    raw.execute("INSERT INTO ledger_windows (log_index, window_id, topic, partition, first_offset, "
                "last_offset, start_us, end_us, size, root, header, window_leaf, leaf_hashes, "
                "idle_cut, sealed_at_us) VALUES (1, ?, 'raw', 0, 1, 1, ?, ?, 2, ?, '{}', x'00', "
                "?, 0, 0)", (h["window_id"], h["start_us"], h["end_us"], h["root"],
                             b"".join(leaves)))
    raw.executemany("INSERT INTO ledger_readings (device_id, seq, ts_us, log_index, "
                    "index_in_window, leaf_hash) VALUES (?, ?, ?, 1, ?, ?)",
                    [(r.device_id, r.seq, r.ts_us, r.index_in_window, r.leaf_hash) for r in rows])
    raw.commit()
    raw.close()
    reopened = Ledger(target)
    assert reopened.newest_sealed("a").seq == 3
    assert not _has_time_index(target)


def _has_time_index(target) -> bool:
    db = connect(target)
    try:
        if is_postgres_url(target):
            return db.one("SELECT 1 FROM pg_indexes WHERE indexname = 'ledger_readings_time'") is not None
        return db.one("SELECT 1 FROM sqlite_master WHERE name = 'ledger_readings_time'") is not None
    finally:
        db.close()


def test_a_reading_index_that_names_windows_keeps_working(ledger_target) -> None:
    """A ledger whose reading index rows carry ``window_id`` (before D46) keeps being appended
    to and read, by the stream, proofs and the audit's view, with the same answers."""
    db = connect(ledger_target)
    db.execute(pg_ddl(OLD_READINGS) if is_postgres_url(ledger_target) else OLD_READINGS)
    db.execute(OLD_INDEX)
    db.close()
    ledger = Ledger(ledger_target)
    assert ledger._rows_name_window
    append(ledger, 0, 1, [("a", 1, T0 + 10), ("b", 1, T0 + 5)])
    append(ledger, 2, 2, [("a", 2, T0 + 20)])
    assert ledger._all("SELECT window_id FROM ledger_readings ORDER BY device_id, seq") == [
        ("p0-0",), ("p0-2",), ("p0-0",)]
    loc = ledger.locate("a", 2)
    assert (loc.window_id, loc.log_index, loc.index_in_window) == ("p0-2", 1, 0)
    assert ledger.newest_sealed("a") == loc and ledger.locate_by_time("a", T0 + 20) == [loc]
    assert set(ledger.locate_many([("a", 1), ("b", 1)])) == {("a", 1), ("b", 1)}
    ledger.close()
    with LedgerView(ledger_target) as view:
        assert view.locate("a", 2).window_id == "p0-2"
        assert view.adjacent("a", 2, above=False).window_id == "p0-0"


def test_a_row_whose_window_is_gone_is_still_listed(tmp_path: Path) -> None:
    """Rows name their window through the log index; an altered ledger whose window row is gone
    still shows the reading (under a name saying so), for the audit to report."""
    target = tmp_path / "l.sqlite"
    ledger = Ledger(target)
    append(ledger, 0, 0, [("a", 1, T0 + 10)])
    ledger.close()
    raw = sqlite3.connect(target)
    raw.execute("DROP TRIGGER ledger_windows_no_delete")
    raw.execute("DELETE FROM ledger_windows")
    raw.commit()
    raw.close()
    assert Ledger(target).locate("a", 1).window_id == "no-window-0"
    with LedgerView(target) as view:
        assert view.locate("a", 1).window_id == "no-window-0"


def test_index_rows_that_do_not_match_their_leaves_are_refused(tmp_path: Path) -> None:
    """The append's row checks name the first row that does not fit, and nothing is written."""
    ledger = Ledger(tmp_path / "l.sqlite")
    h, leaves, rows = stamped_window(0, 0, [("a", 1, T0), ("a", 2, T0 + 1), ("b", 1, T0)])
    bad = [
        (leaves, [rows[0], rows[1]._replace(index_in_window=2), rows[2]._replace(index_in_window=1)]),
        (leaves, [rows[0], rows[1]._replace(leaf_hash=b"\1" * 32), rows[2]]),
        ([leaves[0], leaves[1] + b"\0", leaves[2]],
         [rows[0], rows[1]._replace(leaf_hash=leaves[1] + b"\0"), rows[2]]),
    ]
    for bad_leaves, bad_rows in bad:
        with pytest.raises(ValueError, match="index row 1 does not match its leaf"):
            ledger.append_window("raw", 0, h, bad_leaves, bad_rows, idle_cut=False)
    assert ledger.log_size() == 0 and ledger.reading_count() == 0
    assert ledger.append_window("raw", 0, h, leaves, rows, idle_cut=False) == 0
    assert [(x.device_id, x.seq, x.index_in_window, x.leaf_hash) for x in
            (ledger.locate("a", 1), ledger.locate("a", 2), ledger.locate("b", 1))] == [
        ("a", 1, 0, leaves[0]), ("a", 2, 1, leaves[1]), ("b", 1, 2, leaves[2])]
