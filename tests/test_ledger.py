"""vitalchain.storage.ledger: append-only, idempotent, fenced, multi-process safe window log."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from vitalchain.core.integrity import build_window_header, canonical_reading, reading_leaf_hash
from vitalchain.storage.ledger import Ledger, ReadingIndexRow, StaleWindow, WindowConflict

KEY = bytes(32)
T0 = 1_700_000_000_000_000


def window(partition: int, first: int, last: int, device: str = "d1", seq0: int = 0,
           n: int = 3, hr: int = 70):
    readings = [canonical_reading({"device_id": device, "patient_id": "p", "seq": seq0 + i,
                                   "ts_us": T0 + (seq0 + i) * 1000,
                                   "vitals": {"hr": hr, "spo2": 97, "rr": 14, "temp_c": 36.6,
                                              "sys": 120, "dia": 80}}, KEY) for i in range(n)]
    leaves = [reading_leaf_hash(r) for r in readings]
    header = build_window_header(readings, partition=partition, first_offset=first,
                                 last_offset=last, salt_key_id="k", leaf_hashes=leaves)
    rows = [ReadingIndexRow(r["device_id"], r["seq"], r["ts_us"], i, leaf)
            for i, (r, leaf) in enumerate(zip(readings, leaves, strict=True))]
    return header, leaves, rows


def test_append_is_idempotent_and_refuses_changes(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    h, leaves, rows = window(0, 0, 2)
    assert ledger.append_window("raw", 0, h, leaves, rows, idle_cut=False) == 0
    assert ledger.append_window("raw", 0, h, leaves, rows, idle_cut=False) == 0
    assert ledger.log_size() == 1
    other, ol, orows = window(0, 0, 2, hr=99)  # same window id, different content
    with pytest.raises(WindowConflict):
        ledger.append_window("raw", 0, other, ol, orows, idle_cut=False)
    gap, gl, grows = window(0, 7, 9, seq0=10)  # does not follow sealed offset 2
    with pytest.raises(StaleWindow):
        ledger.append_window("raw", 0, gap, gl, grows, idle_cut=False)
    reseal, rl, rrows = window(0, 3, 4, seq0=0)  # readings already sealed in p0-0
    with pytest.raises(WindowConflict):
        ledger.append_window("raw", 0, reseal, rl, rrows, idle_cut=False)
    assert ledger.log_size() == 1 and ledger.last_sealed_offset("raw", 0) == 2
    ledger.advance_offset("raw", 0, 3, 6)  # a range of only duplicates
    assert ledger.last_sealed_offset("raw", 0) == 6
    ledger.advance_offset("raw", 0, 3, 6)  # again: no-op
    with pytest.raises(StaleWindow):
        ledger.advance_offset("raw", 0, 9, 10)


def test_sealed_rows_cannot_be_rewritten_and_foreign_tables_survive(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    h, leaves, rows = window(0, 0, 2)
    ledger.append_window("raw", 0, h, leaves, rows, idle_cut=False)
    ledger.close()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE anchors (id INTEGER)")
    db.commit()
    for statement in ("UPDATE ledger_windows SET root='00'", "DELETE FROM ledger_readings"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(statement)
    db.close()
    reopened = Ledger(path)
    assert reopened.log_size() == 1
    assert reopened._one("SELECT name FROM sqlite_master WHERE name='anchors'") is not None


def test_no_vitals_in_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    h, leaves, rows = window(0, 0, 2, hr=187)
    ledger.append_window("raw", 0, h, leaves, rows, idle_cut=False)
    ledger.close()
    dump = "\n".join(sqlite3.connect(path).iterdump())
    # As whole numbers only: the digits 187 may well occur inside a wall-clock timestamp such
    # as sealed_at_us (1796122618747960 did), which holds no vital.
    assert re.search(r"(?<![0-9.])187(?![0-9])", dump) is None
    assert re.search(r"(?<![0-9.])36\.6(?![0-9])", dump) is None
    assert "hr" not in dump.replace("chr", "")


APPENDER = """
import sys
from tests.test_ledger import window
from vitalchain.storage.ledger import Ledger
ledger = Ledger(sys.argv[1])
part = int(sys.argv[2])
for i in range(40):
    h, l, r = window(part, i * 3, i * 3 + 2, device=f"dev{part}", seq0=i * 3)
    ledger.append_window("raw", part, h, l, r, idle_cut=False)
"""


def test_several_processes_append_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger(path).close()
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(p)],
                              cwd=Path(__file__).parent.parent) for p in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    ledger = Ledger(path)
    assert ledger.log_size() == 120
    indexes = [w.log_index for w in ledger.windows()]
    assert indexes == list(range(120))
    for p in range(3):
        assert ledger.last_sealed_offset("raw", p) == 119
