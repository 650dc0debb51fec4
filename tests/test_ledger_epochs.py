"""Epochs in the ledger: a partition whose offsets started over (docs/STREAM.md, "Epochs")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.test_ledger import window
from vitalchain.core.integrity import build_window_header, header_epoch, window_id
from vitalchain.storage.ledger import Ledger, StaleWindow, WindowConflict

TAIL = b"\x01" * 32


def epoch_window(partition: int, first: int, last: int, epoch: int, seq0: int, n: int = 3):
    _, leaves, rows = window(partition, first, last, seq0=seq0, n=n)
    readings = [{"device_id": r.device_id, "seq": r.seq, "ts_us": r.ts_us} for r in rows]
    rebuilt = build_window_header(readings, partition=partition, first_offset=first,
                                  last_offset=last, salt_key_id="k", leaf_hashes=leaves,
                                  epoch=epoch)
    return rebuilt, leaves, rows


def test_window_ids_and_headers_of_epoch_zero_are_unchanged() -> None:
    assert window_id(3, 17) == window_id(3, 17, 0) == "p3-17"
    assert window_id(3, 17, 2) == "p3e2-17"
    header, _, _ = window(3, 0, 2)
    assert "epoch" not in header and header_epoch(header) == 0
    later, _, _ = epoch_window(3, 0, 2, epoch=2, seq0=10)
    assert later["epoch"] == 2 and later["window_id"] == "p3e2-0" and header_epoch(later) == 2
    with pytest.raises(ValueError):
        header_epoch({"epoch": -1})


def test_a_new_epoch_starts_the_partition_over_without_sealing_anything_twice(
        tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    h0, l0, r0 = window(0, 0, 2)
    ledger.append_window("raw", 0, h0, l0, r0, idle_cut=False, tail_hash=TAIL)
    position = ledger.position("raw", 0)
    assert (position.epoch, position.sealed_offset, position.tail_hash) == (0, 2, TAIL)

    # The same offsets again in epoch 0 are refused; in epoch 1 they are a window of their own.
    h1, l1, r1 = epoch_window(0, 0, 2, epoch=1, seq0=3)
    with pytest.raises(StaleWindow, match="epoch 1, the partition is in epoch 0"):
        ledger.append_window("raw", 0, h1, l1, r1, idle_cut=False)
    assert ledger.begin_epoch("raw", 0, 0, "test", prior_end_offset=7) == 1
    assert ledger.position("raw", 0).sealed_offset is None
    assert ledger.last_sealed_offset("raw", 1) is None and ledger.current_epoch("raw", 1) == 0
    stale_h, stale_l, stale_r = window(0, 3, 5, seq0=3)
    with pytest.raises(StaleWindow, match="epoch 0, the partition is in epoch 1"):
        ledger.append_window("raw", 0, stale_h, stale_l, stale_r, idle_cut=False)
    with pytest.raises(StaleWindow):
        ledger.advance_offset("raw", 0, 3, 4, epoch=0)
    assert ledger.append_window("raw", 0, h1, l1, r1, idle_cut=False, tail_hash=TAIL) == 1
    assert ledger.last_sealed_offset("raw", 0) == 2 and ledger.current_epoch("raw", 0) == 1
    assert ledger.last_window("raw", 0).window_id == "p0e1-0"

    # A reading sealed in epoch 0 cannot be sealed again in epoch 1.
    again_h, again_l, again_r = epoch_window(0, 3, 5, epoch=1, seq0=0)
    with pytest.raises(WindowConflict, match="already sealed"):
        ledger.append_window("raw", 0, again_h, again_l, again_r, idle_cut=False)
    [record] = ledger.epochs("raw")
    assert (record.partition, record.epoch, record.reason) == (0, 1, "test")
    assert (record.prior_sealed_offset, record.prior_end_offset) == (2, 7)


def test_workers_agree_on_one_new_epoch(tmp_path: Path) -> None:
    """Compare-and-set: the second worker to notice the same new incarnation changes nothing."""
    a, b = Ledger(tmp_path / "l.sqlite"), Ledger(tmp_path / "l.sqlite")
    h0, l0, r0 = window(0, 0, 2)
    a.append_window("raw", 0, h0, l0, r0, idle_cut=False)
    assert a.begin_epoch("raw", 0, 0, "seen by a") == 1
    assert b.begin_epoch("raw", 0, 0, "seen by b") == 1
    assert [e.reason for e in b.epochs()] == ["seen by a"]
    for statement in ("UPDATE ledger_epochs SET epoch=5", "DELETE FROM ledger_epochs"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            a._db.execute(statement)


def test_a_ledger_from_before_epochs_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE ledger_partitions (topic TEXT NOT NULL, partition INTEGER NOT NULL,
            sealed_offset INTEGER NOT NULL, last_end_us INTEGER, PRIMARY KEY (topic, partition));
        INSERT INTO ledger_partitions VALUES ('raw', 0, 41, 123);
    """)
    db.close()
    ledger = Ledger(path)
    position = ledger.position("raw", 0)
    assert (position.epoch, position.sealed_offset, position.tail_hash) == (0, 41, None)
    assert ledger.previous_window_end_us("raw", 0) == 123
