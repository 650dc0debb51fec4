"""Anchor records: checkpoints and the transactions that anchor them, next to the window log.

Living next to the window log (the ledger's SQLite file, or its PostgreSQL database when
``VITALCHAIN_LEDGER_URL`` is set) means a proof's checkpoint and the windows it covers come from
one place.  Two tables, both owned by the anchor package:

``anchor_checkpoints`` (one row per checkpoint of one contract):
    ``pending``     recorded, no transaction in flight for it;
    ``submitted``   a signed transaction for it exists (sent, or about to be);
    ``mined``       its ``Anchored`` event is in a block, fewer than the required confirmations;
    ``anchored``    confirmed: proofs may cite it;
    ``superseded``  never anchored itself, but a larger checkpoint was (the log is append-only,
                    so the larger checkpoint covers every window of this one).

A reorg sends a ``mined`` or ``anchored`` checkpoint back: to ``submitted`` while its
transaction is still known to the node (it will be mined again), else to ``pending`` (anchored
again, or superseded, like any backlog); checkpoints it had superseded go back to ``pending``
too, so "superseded only by a larger *anchored* checkpoint" keeps holding.

``anchor_txs`` (one row per signed transaction, written *before* it is sent, so a crash between
signing and sending is recovered by asking the node about the recorded hash and nonce):
    ``signed`` / ``sent`` (open: its nonce is not consumed yet), ``mined``, ``reverted``,
    ``replaced`` (another transaction on the same nonce was mined), ``dropped`` (the nonce was
    consumed by a transaction we did not send), ``reorged`` (it was mined, then its block left
    the canonical chain and the node no longer knows it), ``abandoned`` (open on a nonce above
    a reorganised-out one: it can never be mined before that nonce is filled again).

``anchor_reorgs`` (one row per anchor seen reorganised out: the vanished transaction and block,
kept for the record and for ``vitalchain anchor status``; never deleted).

``anchor_fees`` (the fee each of our mined transactions paid: the hourly spend cap's ledger).

``anchor_worker_state`` (what the worker is waiting for, if anything: a fee or spend cap), so
``vitalchain anchor status`` in another process can say why the backlog is not being anchored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitalchain.core.timeutil import now_us
from vitalchain.storage.sqldb import LOCK_ANCHORS, SqlDb, connect, install_pg_schema, pg_ddl

SCHEMA = """
CREATE TABLE IF NOT EXISTS anchor_checkpoints (
    contract       TEXT    NOT NULL,
    size           INTEGER NOT NULL,
    root           TEXT    NOT NULL,
    chain_id       INTEGER NOT NULL,
    status         TEXT    NOT NULL,
    created_us     INTEGER NOT NULL,
    superseded_by  INTEGER,
    tx_hash        TEXT,
    block_number   INTEGER,
    block_hash     TEXT,
    log_index      INTEGER,
    gas_used       INTEGER,
    confirmations  INTEGER,
    anchored_us    INTEGER,
    influx_written INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (contract, size)
);
CREATE TABLE IF NOT EXISTS anchor_txs (
    tx_hash      TEXT    PRIMARY KEY,
    contract     TEXT    NOT NULL,
    size         INTEGER NOT NULL,
    nonce        INTEGER NOT NULL,
    max_fee      INTEGER NOT NULL,
    priority_fee INTEGER NOT NULL,
    gas          INTEGER NOT NULL,
    raw          TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    created_us   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS anchor_txs_open ON anchor_txs (contract, status);
CREATE TABLE IF NOT EXISTS anchor_reorgs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    contract       TEXT    NOT NULL,
    size           INTEGER NOT NULL,
    root           TEXT    NOT NULL,
    was_status     TEXT    NOT NULL,
    tx_hash        TEXT,
    block_number   INTEGER,
    block_hash     TEXT,
    canonical_hash TEXT,
    anchored_us    INTEGER,
    detected_us    INTEGER NOT NULL,
    outcome        TEXT    NOT NULL,
    influx_written INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS anchor_fees (
    tx_hash  TEXT    PRIMARY KEY,
    contract TEXT    NOT NULL,
    fee_wei  TEXT    NOT NULL,
    paid_us  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS anchor_worker_state (
    contract   TEXT    PRIMARY KEY,
    waiting    TEXT,
    since_us   INTEGER,
    updated_us INTEGER NOT NULL
);
"""

CHECKPOINT_STATUSES = ("pending", "submitted", "mined", "anchored", "superseded")
OPEN_TX_STATUSES = ("signed", "sent")
# What became of a reorganised-out anchor: its transaction mined again in another block, back in
# the node's pool (waited on), or gone (the checkpoint waits to be anchored again).
REORG_OUTCOMES = ("remined", "in-pool", "gone")


def _with_statuses(query: str, contract: str, statuses: tuple[str, ...]) -> tuple[str, list[Any]]:
    """``query`` (filtered by contract) narrowed to ``statuses`` when any are given."""
    args: list[Any] = [contract]
    if statuses:
        query += f" AND status IN ({','.join('?' * len(statuses))})"
        args += statuses
    return query, args


@dataclass(frozen=True)
class Checkpoint:
    contract: str
    size: int
    root: str
    chain_id: int
    status: str
    created_us: int
    superseded_by: int | None = None
    tx_hash: str | None = None
    block_number: int | None = None
    block_hash: str | None = None
    log_index: int | None = None
    gas_used: int | None = None
    confirmations: int | None = None
    anchored_us: int | None = None
    influx_written: int = 0

    def anchor(self) -> dict[str, Any] | None:
        """The bundle's ``anchor`` object, or None unless confirmed."""
        if self.status != "anchored":
            return None
        return {"chain_id": self.chain_id, "contract": self.contract, "tx_hash": self.tx_hash,
                "block_number": self.block_number, "block_hash": self.block_hash,
                "log_index": self.log_index}


@dataclass(frozen=True)
class Reorg:
    """One anchor seen reorganised out: the transaction and block that no longer count."""

    id: int
    contract: str
    size: int
    root: str
    was_status: str
    tx_hash: str | None
    block_number: int | None
    block_hash: str | None
    canonical_hash: str | None
    anchored_us: int | None
    detected_us: int
    outcome: str
    influx_written: int = 0


@dataclass(frozen=True)
class WorkerState:
    """Why the worker is holding back its backlog (None: it is not)."""

    waiting: str | None
    since_us: int | None
    updated_us: int


@dataclass(frozen=True)
class AnchorTx:
    tx_hash: str
    contract: str
    size: int
    nonce: int
    max_fee: int
    priority_fee: int
    gas: int
    raw: str
    status: str
    created_us: int


class AnchorStore:
    """The anchor tables of one ledger (file or database).  Every method is its own short
    transaction; writes queue like the window log's (:mod:`vitalchain.storage.sqldb`)."""

    def __init__(self, target: Path | str) -> None:
        self._db: SqlDb = connect(target)
        self.target = target
        if self._db.is_postgres:
            install_pg_schema(self._db, "anchor_worker_state",
                              [pg_ddl(st) for st in SCHEMA.split(";\n") if st.strip()])
        else:
            # IF NOT EXISTS: safe for concurrent openers
            self._db.raw.executescript(SCHEMA)  # type: ignore[attr-defined]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AnchorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[SqlDb]:
        with self._db.write(LOCK_ANCHORS) as db:
            yield db

    def _rows(self, sql: str, args: Any = ()) -> list[dict[str, Any]]:
        return self._db.dicts(sql, args)

    # --- checkpoints ----------------------------------------------------------------------
    def add_checkpoint(self, contract: str, chain_id: int, size: int, root: str) -> Checkpoint:
        """Record a checkpoint (idempotent; a different root for a known size is an error)."""
        if size < 1:
            raise ValueError("a checkpoint covers at least one window")
        with self._tx() as db:
            row = db.one("SELECT root FROM anchor_checkpoints WHERE contract=? AND size=?",
                         (contract, size))
            if row is None:
                db.execute("INSERT INTO anchor_checkpoints (contract, size, root, chain_id, status,"
                           " created_us) VALUES (?, ?, ?, ?, 'pending', ?)",
                           (contract, size, root, chain_id, now_us()))
            elif row[0] != root:
                raise ValueError(f"checkpoint {size} was recorded with root {row[0]}, "
                                 f"now {root}: the window log changed under the anchor worker")
        found = self.checkpoint(contract, size)
        assert found is not None
        return found

    def checkpoint(self, contract: str, size: int) -> Checkpoint | None:
        rows = self._rows("SELECT * FROM anchor_checkpoints WHERE contract=? AND size=?",
                          (contract, size))
        return Checkpoint(**rows[0]) if rows else None

    def checkpoints(self, contract: str, *statuses: str) -> list[Checkpoint]:
        """Checkpoints of ``contract`` in size order, optionally only those in ``statuses``."""
        q, args = _with_statuses("SELECT * FROM anchor_checkpoints WHERE contract=?", contract, statuses)
        return [Checkpoint(**r) for r in self._rows(q + " ORDER BY size", args)]

    def latest(self, contract: str, *statuses: str) -> Checkpoint | None:
        found = self.checkpoints(contract, *statuses)
        return found[-1] if found else None

    def covering(self, contract: str, window_index: int, *statuses: str) -> Checkpoint | None:
        """The largest checkpoint (in ``statuses``) that contains log leaf ``window_index``."""
        q = "SELECT * FROM anchor_checkpoints WHERE contract=? AND size>?"
        args: list[Any] = [contract, window_index]
        if statuses:
            q += f" AND status IN ({','.join('?' * len(statuses))})"
            args += statuses
        rows = self._rows(q + " ORDER BY size DESC LIMIT 1", args)
        return Checkpoint(**rows[0]) if rows else None

    def set_status(self, contract: str, size: int, status: str, **fields: Any) -> None:
        if status not in CHECKPOINT_STATUSES:
            raise ValueError(f"unknown checkpoint status {status!r}")
        fields["status"] = status
        sets = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE anchor_checkpoints SET {sets} WHERE contract=? AND size=?",
                       (*fields.values(), contract, size))

    def mark_mined(self, contract: str, size: int, *, tx_hash: str, block_number: int,
                   block_hash: str, log_index: int, gas_used: int, confirmations: int) -> None:
        self.set_status(contract, size, "mined", tx_hash=tx_hash, block_number=block_number,
                        block_hash=block_hash, log_index=log_index, gas_used=gas_used,
                        confirmations=confirmations)

    def mark_anchored(self, contract: str, size: int, confirmations: int) -> None:
        """Confirm ``size`` and supersede every smaller checkpoint that was never anchored."""
        with self._tx() as db:
            db.execute("UPDATE anchor_checkpoints SET status='anchored', confirmations=?, "
                       "anchored_us=? WHERE contract=? AND size=?",
                       (confirmations, now_us(), contract, size))
            db.execute("UPDATE anchor_checkpoints SET status='superseded', superseded_by=? "
                       "WHERE contract=? AND size<? AND status IN ('pending', 'submitted')",
                       (size, contract, size))

    def record_reorg(self, cp: Checkpoint, canonical_hash: str | None, outcome: str) -> Reorg:
        """Record that ``cp``'s anchor left the canonical chain, and send ``cp`` back.

        One transaction: the reorg row, the checkpoint back to ``submitted`` (``in-pool``: its
        transaction will be mined again) or ``pending`` (``gone``, ``remined``: the caller
        records the new block), its transaction reopened or marked ``reorged``, and every
        checkpoint it had superseded back to ``pending`` (a superseded checkpoint must point at
        an anchored one).
        """
        if outcome not in REORG_OUTCOMES:
            raise ValueError(f"unknown reorg outcome {outcome!r}")
        status = "submitted" if outcome == "in-pool" else "pending"
        with self._tx() as db:
            row = db.one(
                "INSERT INTO anchor_reorgs (contract, size, root, was_status, tx_hash, "
                "block_number, block_hash, canonical_hash, anchored_us, detected_us, outcome, "
                "influx_written) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (cp.contract, cp.size, cp.root, cp.status, cp.tx_hash, cp.block_number,
                 cp.block_hash, canonical_hash, cp.anchored_us, now_us(), outcome,
                 0 if cp.influx_written else 1))
            db.execute("UPDATE anchor_checkpoints SET status=?, block_number=NULL, "
                       "block_hash=NULL, log_index=NULL, gas_used=NULL, confirmations=NULL, "
                       "anchored_us=NULL, influx_written=0 WHERE contract=? AND size=?",
                       (status, cp.contract, cp.size))
            db.execute("UPDATE anchor_checkpoints SET status='pending', superseded_by=NULL "
                       "WHERE contract=? AND superseded_by=? AND status='superseded'",
                       (cp.contract, cp.size))
            if cp.tx_hash:
                db.execute("UPDATE anchor_txs SET status=? WHERE tx_hash=?",
                           ("sent" if outcome == "in-pool" else
                            "mined" if outcome == "remined" else "reorged", cp.tx_hash))
                if outcome == "gone":  # never paid on the canonical chain
                    db.execute("DELETE FROM anchor_fees WHERE tx_hash=?", (cp.tx_hash,))
            assert row is not None
            row_id = int(row[0])
        found = [r for r in self.reorgs(cp.contract) if r.id == row_id]
        return found[0]

    def reorgs(self, contract: str) -> list[Reorg]:
        """Every anchor of ``contract`` seen reorganised out, oldest first."""
        return [Reorg(**r) for r in self._rows(
            "SELECT * FROM anchor_reorgs WHERE contract=? ORDER BY id", (contract,))]

    def mark_reorg_influx_written(self, reorg_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE anchor_reorgs SET influx_written=1 WHERE id=?", (reorg_id,))

    # --- fees and the worker's state -------------------------------------------------------
    def record_fee(self, contract: str, tx_hash: str, fee_wei: int) -> None:
        """What a mined transaction of ours paid (gas used x effective gas price); idempotent."""
        with self._tx() as db:
            db.execute("INSERT INTO anchor_fees VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       (tx_hash, contract, str(fee_wei), now_us()))

    def spent_since(self, contract: str, since_us: int) -> int:
        """Wei paid by transactions of ``contract`` mined since ``since_us`` (exact integers)."""
        rows = self._rows("SELECT fee_wei FROM anchor_fees WHERE contract=? AND paid_us>=?",
                          (contract, since_us))
        return sum(int(r["fee_wei"]) for r in rows)

    def set_waiting(self, contract: str, waiting: str | None) -> None:
        """Record why the worker holds its backlog back (None: it no longer does)."""
        with self._tx() as db:
            found = db.dicts("SELECT waiting, since_us FROM anchor_worker_state WHERE contract=?",
                             (contract,))
            row = found[0] if found else None
            now = now_us()
            if waiting is None:
                since = None
            elif row is not None and row["waiting"] is not None:
                since = row["since_us"]  # still waiting: keep when it started (reason may change)
            else:
                since = now
            db.execute("INSERT INTO anchor_worker_state VALUES (?, ?, ?, ?) ON CONFLICT (contract) "
                       "DO UPDATE SET waiting=excluded.waiting, since_us=excluded.since_us, "
                       "updated_us=excluded.updated_us", (contract, waiting, since, now))

    def worker_state(self, contract: str) -> WorkerState | None:
        rows = self._rows("SELECT waiting, since_us, updated_us FROM anchor_worker_state "
                          "WHERE contract=?", (contract,))
        return WorkerState(**rows[0]) if rows else None

    def watched(self, contract: str, final_below: int) -> list[Checkpoint]:
        """Checkpoints whose block may still be reorganised: every ``mined`` one, and the
        ``anchored`` ones in blocks above ``final_below`` (size order)."""
        rows = self._rows(
            "SELECT * FROM anchor_checkpoints WHERE contract=? AND (status='mined' OR "
            "(status='anchored' AND block_number>?)) ORDER BY size", (contract, final_below))
        return [Checkpoint(**r) for r in rows]

    def abandon_open_txs(self, contract: str, above_nonce: int) -> list[AnchorTx]:
        """Give up open transactions on nonces above ``above_nonce`` (a reorganised-out
        transaction's): they cannot be mined before that nonce is filled again.  Their
        checkpoints go back to ``pending``.  Should one still be mined later, the contract
        refuses or ignores it: the larger or equal checkpoint sent on the lower nonce is first.
        """
        found = [t for t in self.open_txs(contract) if t.nonce > above_nonce]
        with self._tx() as db:
            for t in found:
                db.execute("UPDATE anchor_txs SET status='abandoned' WHERE tx_hash=?",
                           (t.tx_hash,))
                db.execute("UPDATE anchor_checkpoints SET status='pending' WHERE contract=? "
                           "AND size=? AND status='submitted'", (contract, t.size))
        return found

    def unwritten_influx(self, contract: str) -> list[Checkpoint]:
        return [c for c in self.checkpoints(contract, "anchored") if not c.influx_written]

    def mark_influx_written(self, contract: str, size: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE anchor_checkpoints SET influx_written=1 WHERE contract=? AND size=?",
                       (contract, size))

    # --- transactions ---------------------------------------------------------------------
    def record_tx(self, tx: AnchorTx) -> None:
        """Record a signed transaction and mark its checkpoint submitted (before sending).

        The same bytes signed again (same checkpoint, nonce and fees: a reorganised-out
        transaction sent anew while fees stood still) hash the same: that row is reopened.
        """
        with self._tx() as db:
            db.execute("INSERT INTO anchor_txs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                       "ON CONFLICT(tx_hash) DO UPDATE SET status=excluded.status, "
                       "created_us=excluded.created_us",
                       (tx.tx_hash, tx.contract, tx.size, tx.nonce, tx.max_fee, tx.priority_fee,
                        tx.gas, tx.raw, tx.status, tx.created_us))
            db.execute("UPDATE anchor_checkpoints SET status='submitted', tx_hash=? "
                       "WHERE contract=? AND size=? AND status IN ('pending', 'submitted')",
                       (tx.tx_hash, tx.contract, tx.size))

    def txs(self, contract: str, *statuses: str) -> list[AnchorTx]:
        q, args = _with_statuses("SELECT * FROM anchor_txs WHERE contract=?", contract, statuses)
        return [AnchorTx(**r) for r in self._rows(q + " ORDER BY created_us", args)]

    def open_txs(self, contract: str) -> list[AnchorTx]:
        return self.txs(contract, *OPEN_TX_STATUSES)

    def set_tx_status(self, tx_hash: str, status: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE anchor_txs SET status=? WHERE tx_hash=?", (status, tx_hash))

    def close_nonce(self, contract: str, nonce: int, mined_tx: str | None, others: str) -> None:
        """The nonce is consumed: ``mined_tx`` (ours, if any) is mined, other open ones ``others``."""
        with self._tx() as db:
            db.execute("UPDATE anchor_txs SET status=? WHERE contract=? AND nonce=? AND status IN "
                       "('signed', 'sent') AND (CAST(? AS TEXT) IS NULL OR tx_hash <> ?)",
                       (others, contract, nonce, mined_tx, mined_tx))
            if mined_tx is not None:
                db.execute("UPDATE anchor_txs SET status='mined' WHERE tx_hash=?", (mined_tx,))
