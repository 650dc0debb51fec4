"""The ledger's contract on both backends: SQLite (the embedded default) and PostgreSQL.

Every test takes ``ledger_target`` (tests/conftest.py), so each runs once on a SQLite file and
once on a fresh database of the session's private PostgreSQL server: the window log, the reading
index, epochs, anchor records, the API's store and the audit's read-only view behave the same.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.pg_support import admin, new_database, server_url
from tests.test_ledger import APPENDER, KEY, T0, window
from tests.test_ledger_epochs import TAIL, epoch_window
from vitalchain.core.integrity import (
    build_window_header,
    canonical_reading,
    reading_leaf_hash,
    window_leaf_hash,
)
from vitalchain.core.timeutil import now_us
from vitalchain.storage.anchors import AnchorStore, AnchorTx
from vitalchain.storage.apistore import ApiStore, StoreError
from vitalchain.storage.ledger import (
    WORKERS_ROLE,
    EpochStart,
    Ledger,
    ReadingIndexRow,
    StaleWindow,
    WindowConflict,
)
from vitalchain.storage.ledger_view import LedgerUnavailable, LedgerView
from vitalchain.storage.sqldb import LOCK_ANCHOR_WORKER, SessionLock, connect, is_postgres_url

ROOT = Path(__file__).parent.parent


def test_append_assigns_consecutive_indexes_and_is_queryable(ledger_target: str | Path) -> None:
    ledger = Ledger(ledger_target)
    assert ledger.backend == ("postgresql" if is_postgres_url(ledger_target) else "sqlite")
    assert ledger.last_sealed_offset("raw", 0) is None and ledger.log_size() == 0
    h0, l0, r0 = window(0, 0, 2)
    h1, l1, r1 = window(1, 0, 4, device="d2")
    h2, l2, r2 = window(0, 3, 5, seq0=3)
    assert ledger.append_window("raw", 0, h0, l0, r0, idle_cut=False) == 0
    assert ledger.append_window("raw", 1, h1, l1, r1, idle_cut=True) == 1
    assert ledger.append_window("raw", 0, h2, l2, r2, idle_cut=False) == 2
    assert ledger.log_size() == 3 and ledger.reading_count() == 9
    assert ledger.last_sealed_offset("raw", 0) == 5
    assert ledger.previous_window_end_us("raw", 0) == h2["end_us"]
    assert ledger.leaf_hashes() == [window_leaf_hash(h) for h in (h0, h1, h2)]
    assert ledger.leaf_hashes(0, 2) == [window_leaf_hash(h) for h in (h0, h1)]
    assert ledger.leaf_hashes(1, 3) == [window_leaf_hash(h) for h in (h1, h2)]
    assert ledger.leaf_hashes(2) == [window_leaf_hash(h2)]
    w = ledger.window_by_id("p1-0")
    assert w is not None and w.log_index == 1 and w.header == h1 and w.leaf_hashes == l1
    assert w.idle_cut and isinstance(w.window_leaf, bytes)
    assert ledger.window_by_index(2).header == h2
    loc = ledger.locate("d1", 4)
    assert loc is not None and (loc.window_id, loc.log_index, loc.index_in_window) == ("p0-3", 2, 1)
    assert loc.leaf_hash == l2[1] and loc.ts_us == T0 + 4000
    assert ledger.locate_by_time("d1", T0 + 4000) == [loc]
    assert set(ledger.locate_many([("d1", 4), ("d2", 0), ("d9", 1), ("d1", 2**64)])) == {("d1", 4), ("d2", 0)}
    assert ledger.newest_sealed("d1").seq == 5
    assert ledger.sealed_leaf("d2", 0) == l1[0] and ledger.sealed_leaf("d2", 99) is None
    assert [x.log_index for x in ledger.windows(start_us=T0 + 3000)] == [2]
    assert ledger.last_window("raw", 0).log_index == 2
    ledger.close()
    assert Ledger(ledger_target).log_size() == 3  # durable, seen by a new connection


def test_append_is_idempotent_fenced_and_refuses_changes(ledger_target: str | Path) -> None:
    ledger = Ledger(ledger_target)
    h, leaves, rows = window(0, 0, 2)
    assert ledger.append_window("raw", 0, h, leaves, rows, idle_cut=False) == 0
    assert ledger.append_window("raw", 0, h, leaves, rows, idle_cut=False) == 0
    other, ol, orows = window(0, 0, 2, hr=99)
    with pytest.raises(WindowConflict):
        ledger.append_window("raw", 0, other, ol, orows, idle_cut=False)
    gap, gl, grows = window(0, 7, 9, seq0=10)
    with pytest.raises(StaleWindow):
        ledger.append_window("raw", 0, gap, gl, grows, idle_cut=False)
    reseal, rl, rrows = window(0, 3, 4, seq0=0)  # readings already sealed: refused, nothing kept
    with pytest.raises(WindowConflict):
        ledger.append_window("raw", 0, reseal, rl, rrows, idle_cut=False)
    assert ledger.log_size() == 1 and ledger.last_sealed_offset("raw", 0) == 2
    assert ledger.window_by_id(reseal["window_id"]) is None
    ledger.advance_offset("raw", 0, 3, 6)
    ledger.advance_offset("raw", 0, 3, 6)
    assert ledger.last_sealed_offset("raw", 0) == 6
    with pytest.raises(StaleWindow):
        ledger.advance_offset("raw", 0, 9, 10)


def test_epochs_start_once_and_fence_old_incarnations(ledger_target: str | Path) -> None:
    a, b = Ledger(ledger_target), Ledger(ledger_target)
    h0, l0, r0 = window(0, 0, 2)
    a.append_window("raw", 0, h0, l0, r0, idle_cut=False, tail_hash=TAIL)
    assert a.position("raw", 0).tail_hash == TAIL
    assert a.begin_epoch("raw", 0, 0, "seen by a", prior_end_offset=7) == 1
    assert b.begin_epoch("raw", 0, 0, "seen by b") == 1  # compare-and-set: no second epoch
    assert [e.reason for e in b.epochs()] == ["seen by a"]
    assert b.epochs()[0].unsealed_records == 4
    stale, sl, sr = window(0, 3, 5, seq0=3)
    with pytest.raises(StaleWindow, match="epoch 0, the partition is in epoch 1"):
        b.append_window("raw", 0, stale, sl, sr, idle_cut=False)
    h1, l1, r1 = epoch_window(0, 0, 2, epoch=1, seq0=3)
    assert b.append_window("raw", 0, h1, l1, r1, idle_cut=False) == 1
    assert a.position("raw", 0).epoch == 1 and a.last_sealed_offset("raw", 0) == 2


@pytest.mark.parametrize("statement", ["UPDATE ledger_windows SET root='00'", "DELETE FROM ledger_readings",
                                       "UPDATE ledger_epochs SET epoch=5", "DELETE FROM ledger_windows"])
def test_sealed_rows_cannot_be_rewritten(ledger_target: str | Path, statement: str) -> None:
    ledger = Ledger(ledger_target)
    h, leaves, rows = window(0, 0, 2)
    ledger.append_window("raw", 0, h, leaves, rows, idle_cut=False)
    ledger.begin_epoch("raw", 0, 0, "test")
    with pytest.raises(Exception, match="append-only"):
        ledger._db.execute(statement)
    assert ledger.log_size() == 1 and ledger.reading_count() == 3 and len(ledger.epochs()) == 1




def test_several_processes_never_get_the_same_log_index(ledger_target: str | Path) -> None:
    Ledger(ledger_target).close()  # schema in place before the race (each opener would also do it)
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(ledger_target), str(p)], cwd=ROOT)
             for p in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    ledger = Ledger(ledger_target)
    assert [w.log_index for w in ledger.windows()] == list(range(120))
    assert ledger.reading_count() == 360
    for p in range(3):
        assert ledger.last_sealed_offset("raw", p) == 119
        # each partition's windows are in offset order in the log, whatever the interleaving
        firsts = [w.header["first_offset"] for w in ledger.windows() if w.header["partition"] == p]
        assert firsts == [i * 3 for i in range(40)]


def test_anchor_records(ledger_target: str | Path) -> None:
    store = AnchorStore(ledger_target)
    cp = store.add_checkpoint("0xc", 31337, 3, "aa")
    assert cp.status == "pending" and store.add_checkpoint("0xc", 31337, 3, "aa") == cp
    with pytest.raises(ValueError, match="window log changed"):
        store.add_checkpoint("0xc", 31337, 3, "bb")
    store.add_checkpoint("0xc", 31337, 5, "cc")
    tx = AnchorTx("0xt1", "0xc", 5, 7, 10, 1, 90000, "0xraw", "sent", 1)
    store.record_tx(tx)
    store.record_tx(tx)  # same bytes again: reopened, not duplicated
    assert [t.tx_hash for t in store.open_txs("0xc")] == ["0xt1"]
    assert store.checkpoint("0xc", 5).status == "submitted"
    store.close_nonce("0xc", 7, "0xt1", "replaced")
    assert store.txs("0xc", "mined")[0].tx_hash == "0xt1"
    store.mark_mined("0xc", 5, tx_hash="0xt1", block_number=9, block_hash="0xb", log_index=0,
                     gas_used=50000, confirmations=1)
    store.mark_anchored("0xc", 5, 2)
    assert [c.status for c in store.checkpoints("0xc")] == ["superseded", "anchored"]
    assert store.covering("0xc", 4, "anchored").size == 5
    store.record_fee("0xc", "0xt1", 10**18 + 1)
    store.record_fee("0xc", "0xt1", 10**18 + 1)
    assert store.spent_since("0xc", 0) == 10**18 + 1
    store.set_waiting("0xc", "fee above cap")
    first = store.worker_state("0xc")
    store.set_waiting("0xc", "spend cap")
    assert store.worker_state("0xc").since_us == first.since_us
    store.set_waiting("0xc", None)
    assert store.worker_state("0xc").waiting is None
    reorg = store.record_reorg(store.checkpoint("0xc", 5), None, "gone")
    assert reorg.outcome == "gone" and [r.id for r in store.reorgs("0xc")] == [reorg.id]
    assert [c.status for c in store.checkpoints("0xc")] == ["pending", "pending"]
    assert store.spent_since("0xc", 0) == 0
    store.close()


def test_api_store(ledger_target: str | Path) -> None:
    target = ledger_target if is_postgres_url(ledger_target) else Path(ledger_target).with_name("api.sqlite")
    store = ApiStore(target)
    token = store.add_user("dr_a", "clinician")
    with pytest.raises(StoreError, match="already exists"):
        store.add_user("dr_a", "clinician")
    assert store.authenticate(token).name == "dr_a" and store.authenticate(token + "x") is None
    grant = store.add_grant("pat-1", "dr_a", now_us() + 3_600_000_000, "admin")
    assert store.grant(grant.id) == grant and store.access_decision("dr_a", "pat-1")[0]
    assert store.revoke("pat-1", "dr_a", "admin") == 1
    assert not store.access_decision("dr_a", "pat-1")[0]
    store.disable_user("dr_a")
    assert store.authenticate(token) is None
    rows = [store.add_access(lambda seq: ({"seq": seq, "ts_us": seq, "user": "dr_a",
                                           "patient_id": "pat-1", "allowed": True}, bytes(32)))
            for _ in range(3)]
    assert [r.seq for r in rows] == [1, 2, 3]
    assert [r.seq for r in store.access_entries(user="dr_a")] == [1, 2, 3]
    store.mark_sealed(1, 2, "w1")
    assert [r.seq for r in store.unsealed(10)] == [3]
    store.close()


def test_the_read_only_view(ledger_target: str | Path) -> None:
    if not is_postgres_url(ledger_target):
        with pytest.raises(LedgerUnavailable):
            LedgerView(ledger_target)
    ledger = Ledger(ledger_target)
    h, leaves, rows = window(0, 0, 2)
    ledger.append_window("raw", 0, h, leaves, rows, idle_cut=False)
    ledger.begin_epoch("raw", 1, 0, "test")
    with LedgerView(ledger_target) as view:
        assert view.log_size() == 1 and view.leaf_hashes() == ledger.leaf_hashes()
        [info] = view.reading_windows(0, 2**62)
        assert info.window_id == "p0-0" and view.window_index("p0-0") == 0
        assert [r.seq for r in view.window_readings(info)] == [0, 1, 2]
        assert view.locate("d1", 1).leaf_hash == leaves[1]
        assert list(view.device_seqs("d1", 0, 9)) == [0, 1, 2]
        assert view.window_place(0) == ("raw", 0, 0)
        assert [e.partition for e in view.epochs()] == [1]
        assert view.checkpoints("0xc") == []
        with pytest.raises(Exception, match=r"read-only|readonly"):
            view._db.execute("INSERT INTO ledger_epochs VALUES ('x', 0, 1, 0, 'r', NULL, NULL)")


# --- PostgreSQL only ------------------------------------------------------------------------------
def test_workers_role_may_insert_but_not_update_or_delete(postgres) -> None:
    url = new_database(postgres)
    Ledger(url).close()  # the owner installs schema, triggers and grants
    database = url.rsplit("/", 1)[1]
    with admin(postgres, database) as conn:
        conn.execute(f"DROP ROLE IF EXISTS w_{database}")
        conn.execute(f"CREATE ROLE w_{database} LOGIN IN ROLE {WORKERS_ROLE}")
    worker = Ledger(server_url(postgres, database, user=f"w_{database}"))
    h, leaves, rows = window(0, 0, 2)
    assert worker.append_window("raw", 0, h, leaves, rows, idle_cut=False) == 0
    assert worker.begin_epoch("raw", 0, 0, "by the worker role") == 1
    assert worker.note_epoch_start("raw", 0, 1, 0, b"\x05" * 32)
    for statement in ("UPDATE ledger_windows SET root='00'", "DELETE FROM ledger_readings",
                      "DELETE FROM ledger_epochs", "TRUNCATE ledger_windows",
                      "DELETE FROM ledger_epoch_starts"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            worker._db.execute(statement)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        worker._db.execute("DROP TRIGGER ledger_windows_append_only ON ledger_windows")
    assert worker.log_size() == 1 and worker.reading_count() == 3


def test_one_anchor_worker_per_ledger_database(postgres) -> None:
    url = new_database(postgres)
    held = SessionLock(url, LOCK_ANCHOR_WORKER)
    with pytest.raises(BlockingIOError):
        SessionLock(url, LOCK_ANCHOR_WORKER)
    held.release()
    SessionLock(url, LOCK_ANCHOR_WORKER).release()


def test_an_unreachable_database_is_a_clear_error_without_the_password() -> None:
    from vitalchain.app.stack.ports import free_port
    from vitalchain.errors import Unavailable

    with pytest.raises(Unavailable, match="unreachable") as caught:
        Ledger(f"postgresql://vc:s3cret@127.0.0.1:{free_port()}/ledger")
    assert "s3cret" not in str(caught.value)


@pytest.mark.integration
def test_the_stacks_private_server_keeps_the_ledger_across_a_restart(tmp_path: Path) -> None:
    """`stack up` runs initdb once and a server on the URL's port; the ledger survives a restart of
    it (durable, in the state folder); `stack down` leaves nothing running."""
    from tests.conftest import stack_settings
    from vitalchain.app.stack.ports import free_port
    from vitalchain.app.stack.supervisor import Stack

    settings = stack_settings(tmp_path / "state", ledger_url=f"postgresql://vc@127.0.0.1:{free_port()}/ledger")
    stack = Stack(settings)
    try:
        stack.up(("postgres",))
        [row] = [r for r in stack.status() if r.name == "postgres"]
        assert row.healthy and row.detail.startswith("query ok") and row.port == settings.private_postgres.port
        h, leaves, rows = window(0, 0, 2)
        kept_open = Ledger(settings.ledger_target)
        kept_open.append_window("raw", 0, h, leaves, rows, idle_cut=False)
        first = stack.pid("postgres")
        stack.restart("postgres")
        assert stack.pid("postgres") not in (None, first)
        with Ledger(settings.ledger_target) as ledger:
            assert ledger.log_size() == 1 and ledger.locate("d1", 2) is not None
        # A connection the restart dropped: the statement that finds out fails, and says so;
        # the next one runs on a new connection (the stream retries a failed seal).
        h2, l2, r2 = window(0, 3, 5, seq0=3)
        with pytest.raises(psycopg.OperationalError):
            kept_open.append_window("raw", 0, h2, l2, r2, idle_cut=False)
        assert kept_open.append_window("raw", 0, h2, l2, r2, idle_cut=False) == 1
        assert kept_open.log_size() == 2
        kept_open.close()
    finally:
        stack.down()
    assert stack.pid("postgres") is None
    assert not list((tmp_path / "state").rglob("*.sqlite"))


def test_index_rows_keep_their_window_positions_whatever_the_insert_order(ledger_target) -> None:
    """The append inserts a window's index rows in key order (device, seq), not window order:
    each reading must still be found at its own position, with its own leaf and time."""
    readings = [canonical_reading({"device_id": f"dev-{d}", "patient_id": "p", "seq": s,
                                   "ts_us": T0 + s * 1000 + d,
                                   "vitals": {"hr": 60 + d, "spo2": 97, "rr": 14,
                                              "temp_c": 36.6, "sys": 120, "dia": 80}}, KEY)
                for s in (5, 4, 3) for d in (9, 2, 7, 0)]  # interleaved, keys descending
    leaves = [reading_leaf_hash(r) for r in readings]
    header = build_window_header(readings, partition=0, first_offset=0, last_offset=11,
                                 salt_key_id="k", leaf_hashes=leaves)
    rows = [ReadingIndexRow(r["device_id"], r["seq"], r["ts_us"], i, leaf)
            for i, (r, leaf) in enumerate(zip(readings, leaves, strict=True))]
    with Ledger(ledger_target) as ledger:
        assert ledger.append_window("raw", 0, header, leaves, rows, idle_cut=False) == 0
        for i, r in enumerate(readings):
            loc = ledger.locate(r["device_id"], r["seq"])
            assert loc is not None
            assert (loc.index_in_window, loc.leaf_hash, loc.ts_us, loc.window_id) == (
                i, leaves[i], r["ts_us"], header["window_id"])
        assert ledger.reading_count() == len(readings)


def test_an_epochs_start_is_noted_once_and_fenced_by_the_epoch(ledger_target: str | Path) -> None:
    """D56: the first record read in an epoch, noted by whichever worker reads it first; a
    different start in the same epoch, or a note for an epoch that is over, is refused."""
    a, b = Ledger(ledger_target), Ledger(ledger_target)
    first, other = b"\x02" * 32, b"\x03" * 32
    assert a.epoch_start("raw", 0, 0) is None
    assert a.note_epoch_start("raw", 0, 0, 5, first)
    assert b.note_epoch_start("raw", 0, 0, 5, first)  # the same start: agreed
    assert not b.note_epoch_start("raw", 0, 0, 5, other)  # another incarnation's record
    assert not b.note_epoch_start("raw", 0, 0, 6, first)
    assert b.epoch_start("raw", 0, 0) == EpochStart(5, first)
    assert a.begin_epoch("raw", 0, 0, "restarted") == 1
    assert not a.note_epoch_start("raw", 0, 0, 5, first)  # epoch 0 is over
    assert a.note_epoch_start("raw", 0, 1, 0, other)
    assert [b.epoch_start("raw", 0, e) for e in (0, 1)] == [EpochStart(5, first),
                                                            EpochStart(0, other)]
    assert b.epoch_start("raw", 1, 0) is None
    with pytest.raises(Exception, match="append-only"):
        a._db.execute("DELETE FROM ledger_epoch_starts")
    with pytest.raises(Exception, match="append-only"):
        a._db.execute("UPDATE ledger_epoch_starts SET first_offset = 9")


def test_a_ledger_from_before_epoch_starts_gets_the_table_on_open(ledger_target: str | Path) -> None:
    ledger = Ledger(ledger_target)
    h, leaves, rows = window(0, 0, 2)
    ledger.append_window("raw", 0, h, leaves, rows, idle_cut=False)
    ledger.close()
    db = connect(ledger_target)  # the layout before D56: no epoch starts
    db.execute("DROP TABLE ledger_epoch_starts")
    db.close()
    upgraded = Ledger(ledger_target)
    assert upgraded.log_size() == 1
    assert upgraded.note_epoch_start("raw", 1, 0, 0, b"\x04" * 32)
    with pytest.raises(Exception, match="append-only"):
        upgraded._db.execute("DELETE FROM ledger_epoch_starts")
