"""The anchoring worker: follows the window log and anchors checkpoints on Ethereum.

Cadence: a checkpoint (size N = log size, root = RFC 9162 root of the first N window leaves) is
recorded every ``anchor_interval_seconds`` or every ``anchor_every_windows`` new windows,
whichever comes first, whether or not the chain is reachable.  One transaction is in flight at a
time; it anchors the *latest* recorded checkpoint.

What "nothing anchored twice, nothing skipped" means here, precisely:

- every recorded checkpoint ends ``anchored`` or ``superseded``; ``superseded`` only ever by a
  *larger anchored* checkpoint of the same log (append-only, so it covers all the same windows
  and the smaller root is provably a prefix of it: see :mod:`vitalchain.anchor.proofs` consistency proofs);
- so every window below the latest anchored size is covered by an anchored checkpoint, and once
  the log stops growing the latest anchored size reaches the log size;
- no root is emitted twice by the contract: each transaction is recorded (hash, nonce, fees, raw
  bytes) *before* it is sent, all retries reuse the open nonce (so at most one of them can ever
  be mined), and the contract itself ignores a root it already holds.

Backlog (node down): checkpoints keep being recorded; when the node is back, one transaction
anchors the latest one, superseding the rest.  A transaction that is unknown to the node, or
stuck longer than ``resend_after`` seconds, is replaced on the same nonce with fees raised by
25% (and pointed at the latest checkpoint); if the nonce was consumed by a transaction we did not
send, the checkpoint goes back to ``pending`` and is sent on a fresh nonce.  A checkpoint counts
as anchored after ``anchor_confirmations`` blocks.

Reorgs: the block hash of every mined checkpoint, and of every anchored one whose block is less
than ``anchor_reorg_watch_blocks`` deep, is compared with the canonical chain on every step
(before anything else: a reorg can strand the transaction in flight behind a vanished nonce).
An anchor that left the canonical chain is recorded (``anchor_reorgs``) and its checkpoint goes
back: mined again elsewhere (new block, confirmations start over), back in the node's pool
(waited on), or gone (pending again: the latest checkpoint is anchored anew, superseding it).
Open transactions on nonces above a vanished one can never be mined before it, so they are
abandoned and their checkpoints wait too.

Fees (:mod:`vitalchain.anchor.feepolicy`): above ``anchor_max_fee_gwei`` per gas or
``anchor_max_spend_eth_per_hour`` the worker sends nothing, says why (progress line and
``anchor status``), keeps recording checkpoints, and anchors the latest one when fees fall.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from web3.exceptions import BlockNotFound, TransactionNotFound

from vitalchain.anchor import chain
from vitalchain.anchor.feepolicy import FeeCaps, decide
from vitalchain.config import Settings
from vitalchain.core.timeutil import now_us
from vitalchain.errors import Altered, Refused
from vitalchain.storage.anchors import AnchorStore, AnchorTx, Checkpoint, Reorg
from vitalchain.storage.influx import InfluxClient, Point
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.logmirror import LogMirror
from vitalchain.storage.sqldb import LOCK_ANCHOR_WORKER, SessionLock

log = logging.getLogger("vitalchain.anchor")

ANCHORS_MEASUREMENT = "anchors"


class WorkerLockedError(Refused):
    """Another anchor worker already runs on this ledger."""


class LedgerDivergedError(Altered):
    """The ledger's window log no longer matches a checkpoint this worker recorded."""


@dataclass
class Progress:
    """What one tick saw and did; handed to ``on_progress``."""

    log_size: int = 0
    latest_checkpoint: int = 0
    latest_anchored: int = 0
    pending: int = 0
    chain_ok: bool = False
    events: list[str] = field(default_factory=list)
    error: str | None = None
    waiting: str | None = None  # why the backlog is held back (fee or spend cap)

    def line(self) -> str:
        """The state part of the worker's progress line."""
        text = f"log {self.log_size}, anchored {self.latest_anchored}, open {self.pending}"
        if self.waiting:
            text += (f"; WAITING ({self.waiting}); backlog {self.log_size - self.latest_anchored}"
                     " windows")
        return text


def anchor_point(cp: Checkpoint) -> Point:
    """The ``anchors`` point of one anchored checkpoint (same timestamp on rewrite: idempotent)."""
    return Point(
        ANCHORS_MEASUREMENT,
        {"contract": cp.contract, "chain_id": str(cp.chain_id)},
        {"size": cp.size, "root": cp.root, "tx_hash": cp.tx_hash or "",
         "block_number": cp.block_number or 0, "block_hash": cp.block_hash or "",
         "log_index": cp.log_index or 0, "gas_used": cp.gas_used or 0,
         "confirmations": cp.confirmations or 0, "status": cp.status},
        time_ns=(cp.anchored_us or cp.created_us) * 1000,
    )


def reorg_point(reorg: Reorg, chain_id: int) -> Point:
    """Overwrites the ``anchors`` point of an anchor that was reorganised out (status reorged)."""
    return Point(
        ANCHORS_MEASUREMENT,
        {"contract": reorg.contract, "chain_id": str(chain_id)},
        {"size": reorg.size, "root": reorg.root, "tx_hash": reorg.tx_hash or "",
         "block_number": reorg.block_number or 0, "block_hash": reorg.block_hash or "",
         "log_index": 0, "gas_used": 0, "confirmations": 0, "status": "reorged"},
        time_ns=(reorg.anchored_us or reorg.detected_us) * 1000,
    )


class AnchorWorker:
    """One anchoring loop over one ledger and one contract; call :meth:`tick` repeatedly."""

    def __init__(self, settings: Settings, *, resend_after: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.contract_address = chain.contract_address(settings)
        self.account = chain.anchor_account(settings)
        self.w3 = chain.connect(settings, timeout=3.0, retry=False)
        self.contract = chain.anchor_contract(self.w3, self.contract_address)
        self.resend_after = (resend_after if resend_after is not None
                             else max(10 * settings.eth_block_time, 5.0))
        self.ledger = Ledger(settings.ledger_target)
        self.store = AnchorStore(settings.ledger_target)
        self.mirror = LogMirror(self.ledger)
        self.log = self.mirror.log
        self._influx_retry_at = 0.0
        self._chain_retry_at = 0.0
        self._chain_failures = 0
        self._last_error: str | None = None
        self._chain_checked = False
        self._waiting: str | None = None
        self._watched_head: tuple[int, bytes] | None = None  # chain head at the last reorg check
        self._waiting_now: str | None = None
        self.caps = FeeCaps.from_settings(settings.anchor_max_fee_gwei,
                                          settings.anchor_max_spend_eth_per_hour)
        self._check_recorded_roots()
        self.store.set_waiting(self.contract_address, None)  # a previous run's state is stale

    def close(self) -> None:
        self.ledger.close()
        self.store.close()

    # --- the window log -------------------------------------------------------------------
    def _check_recorded_roots(self) -> None:
        """Refuse to run if the ledger no longer has the roots we recorded (altered log)."""
        size = self.mirror.sync()
        for cp in self.store.checkpoints(self.contract_address):
            if cp.size > size:
                raise LedgerDivergedError(f"checkpoint {cp.size} is larger than the ledger's log "
                                          f"({size} windows): wrong ledger file?")
            if self.log.root(cp.size).hex() != cp.root:
                raise LedgerDivergedError(f"the ledger's root at size {cp.size} is not the "
                                          f"recorded checkpoint root {cp.root}")

    def _maybe_checkpoint(self, size: int, progress: Progress) -> None:
        latest = self.store.latest(self.contract_address)
        last_size = latest.size if latest else 0
        if size <= last_size:
            return
        last_time = latest.created_us / 1e6 if latest else 0.0
        due = (size - last_size >= self.settings.anchor_every_windows
               or self.clock() - last_time >= self.settings.anchor_interval_seconds)
        if due:
            self.store.add_checkpoint(self.contract_address, self.settings.eth_chain_id, size,
                                      self.log.root(size).hex())
            progress.events.append(f"checkpoint {size}")

    # --- the chain ------------------------------------------------------------------------
    def _receipt(self, tx_hash: str) -> dict[str, Any] | None:
        try:
            return dict(self.w3.eth.get_transaction_receipt(tx_hash))  # type: ignore[arg-type]
        except TransactionNotFound:
            return None

    def _known(self, tx_hash: str) -> bool:
        try:
            self.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
            return True
        except TransactionNotFound:
            return False

    def _anchored_log(self, receipt: dict[str, Any], root: str) -> dict[str, Any] | None:
        return chain.anchored_log_in_receipt(receipt, self.contract_address, root)

    def _record_mined(self, cp: Checkpoint, entry: dict[str, Any], gas_used: int) -> None:
        head = self.w3.eth.block_number
        self.store.mark_mined(
            self.contract_address, cp.size, tx_hash="0x" + bytes(entry["transactionHash"]).hex(),
            block_number=int(entry["blockNumber"]), block_hash="0x" + bytes(entry["blockHash"]).hex(),
            log_index=int(entry["logIndex"]), gas_used=gas_used,
            confirmations=head - int(entry["blockNumber"]) + 1)

    def _reconcile(self, cp: Checkpoint, progress: Progress) -> None:
        """No transaction of ours anchored ``cp``: ask the contract what it holds."""
        size, block = self.contract.functions.checkpoints(chain.root_bytes(cp.root)).call()
        if block:
            entry = chain.anchored_event(self.w3, self.contract_address, cp.root)
            if entry is not None and size == cp.size:
                receipt = self.w3.eth.get_transaction_receipt(entry["transactionHash"])
                self._record_mined(cp, entry, int(receipt["gasUsed"]))
                progress.events.append(f"found {cp.size} already on chain")
                return
        self.store.set_status(self.contract_address, cp.size, "pending")

    def _on_receipt(self, tx: AnchorTx, receipt: dict[str, Any], progress: Progress) -> None:
        self.store.close_nonce(self.contract_address, tx.nonce, tx.tx_hash, "replaced")
        price = int(receipt.get("effectiveGasPrice") or tx.max_fee)
        self.store.record_fee(self.contract_address, tx.tx_hash, int(receipt["gasUsed"]) * price)
        group = {t.size for t in self.store.txs(self.contract_address) if t.nonce == tx.nonce}
        cp = self.store.checkpoint(self.contract_address, tx.size)
        assert cp is not None
        entry = self._anchored_log(receipt, cp.root) if receipt["status"] == 1 else None
        if entry is not None:
            self._record_mined(cp, entry, int(receipt["gasUsed"]))
            progress.events.append(f"mined {cp.size} in block {receipt['blockNumber']}")
        else:
            if receipt["status"] != 1:
                self.store.set_tx_status(tx.tx_hash, "reverted")
                progress.events.append(f"tx {tx.tx_hash} for {cp.size} reverted")
            self._reconcile(cp, progress)
        # Checkpoints whose transactions lost the nonce race wait again (to be superseded).
        for size in group - {tx.size}:
            other = self.store.checkpoint(self.contract_address, size)
            if other is not None and other.status == "submitted":
                self.store.set_status(self.contract_address, size, "pending")

    def _track_open(self, progress: Progress) -> bool:
        """Follow the open nonce; returns True while a transaction is still in flight."""
        open_txs = self.store.open_txs(self.contract_address)
        if not open_txs:
            return False
        nonce = min(t.nonce for t in open_txs)
        group = [t for t in open_txs if t.nonce == nonce]
        # Nonce first, receipts second: a tx mined in between is then seen by its receipt.
        consumed = self.w3.eth.get_transaction_count(self.account.address, "latest") > nonce
        for tx in reversed(group):
            receipt = self._receipt(tx.tx_hash)
            if receipt is not None:
                self._on_receipt(tx, receipt, progress)
                return True
        if consumed:
            self.store.close_nonce(self.contract_address, nonce, None, "dropped")
            progress.events.append(f"nonce {nonce} taken by another transaction")
            for size in {t.size for t in group}:
                cp = self.store.checkpoint(self.contract_address, size)
                if cp is not None and cp.status == "submitted":
                    self._reconcile(cp, progress)
            return True
        newest = group[-1]
        age = self.clock() - newest.created_us / 1e6
        if self._known(newest.tx_hash) and age < self.resend_after:
            return True
        target = self.store.latest(self.contract_address, "pending", "submitted")
        if target is None:  # cannot happen: an open tx means a submitted checkpoint
            target = self.store.checkpoint(self.contract_address, newest.size)
        assert target is not None
        floor = chain.Fees(max(t.max_fee for t in group), max(t.priority_fee for t in group))
        reason = "stuck" if self._known(newest.tx_hash) else "unknown to the node"
        if self._send(target, nonce, floor, progress):
            progress.events.append(f"replaced nonce {nonce} ({reason}) with checkpoint "
                                   f"{target.size}")
        return True

    def _canonical_hash(self, number: int) -> str | None:
        try:
            return "0x" + bytes(self.w3.eth.get_block(number)["hash"]).hex()
        except BlockNotFound:
            return None  # the chain is shorter now than the anchor's block number

    def _watch_reorgs(self, progress: Progress) -> None:
        """Send back every mined or recent anchored checkpoint whose block left the chain.

        Only when the chain head changed (number or hash) since the last look: a reorg always
        changes the head, and a quiet chain then costs one request per step, not one per
        watched checkpoint.
        """
        latest = self.w3.eth.get_block("latest")
        head_id = (int(latest["number"]), bytes(latest["hash"]))
        if head_id == self._watched_head:
            return
        head = head_id[0]
        watched = self.store.watched(self.contract_address,
                                     head - self.settings.anchor_reorg_watch_blocks)
        vanished_nonces = []
        for cp in watched:
            assert cp.block_number is not None
            canonical = self._canonical_hash(cp.block_number)
            if canonical == cp.block_hash:
                continue
            vanished = self._on_reorg(cp, canonical, progress)
            if vanished is not None:
                vanished_nonces.append(vanished)
        self._watched_head = head_id
        if vanished_nonces:
            lowest = min(vanished_nonces)
            abandoned = self.store.abandon_open_txs(self.contract_address, lowest)
            if abandoned:
                progress.events.append(f"abandoned {len(abandoned)} open transaction(s) above "
                                       f"vanished nonce {lowest}")

    def _on_reorg(self, cp: Checkpoint, canonical: str | None, progress: Progress) -> int | None:
        """Record one reorganised-out anchor; returns its nonce if the transaction is gone."""
        tx_hash = cp.tx_hash or ""
        receipt = self._receipt(tx_hash) if tx_hash else None
        entry = (self._anchored_log(receipt, cp.root)
                 if receipt is not None and receipt["status"] == 1 else None)
        where = f"tx {tx_hash}, block {cp.block_number} {cp.block_hash}"
        if entry is not None:
            self.store.record_reorg(cp, canonical, "remined")
            self._record_mined(cp, entry, int(receipt["gasUsed"]))  # type: ignore[index]
            progress.events.append(f"REORG: anchor of {cp.size} ({where}) reorganised out; "
                                   f"mined again in block {int(entry['blockNumber'])}")
            return None
        if tx_hash and self._known(tx_hash):
            self.store.record_reorg(cp, canonical, "in-pool")
            progress.events.append(f"REORG: anchor of {cp.size} ({where}) reorganised out; "
                                   "its transaction is back in the pool")
            return None
        self.store.record_reorg(cp, canonical, "gone")
        progress.events.append(f"REORG: anchor of {cp.size} ({where}) reorganised out; "
                               "anchoring again")
        nonces = [t.nonce for t in self.store.txs(self.contract_address) if t.tx_hash == tx_hash]
        return nonces[0] if nonces else None

    def _confirm(self, progress: Progress) -> bool:
        """Count confirmations of mined checkpoints; returns True while one is unconfirmed."""
        waiting = False
        head = self.w3.eth.block_number
        for cp in self.store.checkpoints(self.contract_address, "mined"):
            assert cp.block_number is not None
            confirmations = head - cp.block_number + 1
            if confirmations >= self.settings.anchor_confirmations:
                self.store.mark_anchored(self.contract_address, cp.size, confirmations)
                progress.events.append(f"anchored {cp.size} ({confirmations} confirmations)")
            else:
                self.store.set_status(self.contract_address, cp.size, "mined",
                                      confirmations=confirmations)
                waiting = True
        return waiting

    def _send(self, cp: Checkpoint, nonce: int | None, floor: chain.Fees | None,
              progress: Progress) -> bool:
        """Sign, record and send a transaction for ``cp``; False if nothing was sent."""
        _, block = self.contract.functions.checkpoints(
            chain.root_bytes(cp.root)).call()
        if block:
            self._reconcile(cp, progress)
            return False
        latest_size = self.contract.functions.latestSize().call()
        if latest_size >= cp.size:
            raise chain.ChainError(
                f"contract {self.contract_address} already holds size {latest_size} >= "
                f"{cp.size} from outside this ledger: is another ledger anchoring here?")
        if nonce is None:
            nonce = self._next_nonce()
        fn = self.contract.functions.anchor(chain.root_bytes(cp.root), cp.size)
        gas = int(fn.estimate_gas({"from": self.account.address}) * chain.GAS_MARGIN)
        base, tip = chain.fee_quote(self.w3)
        spent = self.store.spent_since(self.contract_address, now_us() - 3600 * 10**6)
        decision = decide(base, tip, gas, self.caps, spent, floor)
        if decision.fees is None:
            self._waiting_now = decision.reason
            return False
        fees = decision.fees
        tx = fn.build_transaction({
            "from": self.account.address, "nonce": nonce, "gas": gas,
            "maxFeePerGas": fees.max_fee, "maxPriorityFeePerGas": fees.priority_fee,
            "chainId": self.settings.eth_chain_id,
        })
        signed = self.account.sign_transaction(tx)
        tx_hash = "0x" + bytes(signed.hash).hex()
        self.store.record_tx(AnchorTx(tx_hash, self.contract_address, cp.size, nonce,
                                      fees.max_fee, fees.priority_fee, gas,
                                      "0x" + bytes(signed.raw_transaction).hex(), "signed",
                                      now_us()))
        try:
            self.w3.eth.send_raw_transaction(signed.raw_transaction)
        except Exception as exc:
            text = str(exc).lower()
            if "already known" not in text:
                # Left "signed": the next tick asks the node about it and resends or moves on.
                raise
        self.store.set_tx_status(tx_hash, "sent")
        progress.events.append(f"sent {cp.size} as {tx_hash} (nonce {nonce}, max fee "
                               f"{fees.max_fee} wei/gas)")
        return True

    def _next_nonce(self) -> int:
        """The node's pending nonce, unless our own abandoned transactions inflate it.

        After a reorg removed nonce n, a transaction of ours on n+1 may still sit in the node's
        pool and be counted as pending although it can never be mined before n: then n (the
        mined count) is the nonce to fill.
        """
        pending = self.w3.eth.get_transaction_count(self.account.address, "pending")
        latest = self.w3.eth.get_transaction_count(self.account.address, "latest")
        stale = [t for t in self.store.txs(self.contract_address, "abandoned")
                 if t.nonce >= latest]
        return latest if stale and pending > latest else pending

    def _advance_chain(self, progress: Progress) -> None:
        if not self._chain_checked:
            chain.check_chain(self.w3, self.settings)
            if not chain.code_matches(self.w3, self.contract_address):
                raise chain.ChainError(f"no VitalAnchor code at {self.contract_address}: "
                                       "deploy first (`vitalchain anchor deploy`)")
            self._chain_checked = True
        self._watch_reorgs(progress)
        if self._track_open(progress):
            return
        if self._confirm(progress):
            return
        target = self.store.latest(self.contract_address, "pending")
        anchored = self.store.latest(self.contract_address, "anchored")
        if target is not None and (anchored is None or target.size > anchored.size):
            self._send(target, None, None, progress)

    # --- InfluxDB -------------------------------------------------------------------------
    def _flush_influx(self, progress: Progress) -> None:
        todo = self.store.unwritten_influx(self.contract_address)
        reorgs = [r for r in self.store.reorgs(self.contract_address) if not r.influx_written]
        if not (todo or reorgs) or self.clock() < self._influx_retry_at:
            return

        async def write() -> None:
            async with InfluxClient(self.settings, retries=1, backoff_s=0.2) as client:
                # Reorg points first: a re-anchor of the same size gets a new timestamp anyway.
                await client.write([reorg_point(r, self.settings.eth_chain_id) for r in reorgs]
                                   + [anchor_point(cp) for cp in todo])

        try:
            asyncio.run(write())
        except Exception as exc:  # kept in the store; retried later
            self._influx_retry_at = self.clock() + 5.0
            progress.events.append(f"influx write deferred: {exc}")
            return
        for cp in todo:
            self.store.mark_influx_written(self.contract_address, cp.size)
        for r in reorgs:
            self.store.mark_reorg_influx_written(r.id)

    # --- one step -------------------------------------------------------------------------
    def tick(self) -> Progress:
        progress = Progress()
        size = self.mirror.sync()
        progress.log_size = size
        self._maybe_checkpoint(size, progress)
        if self.clock() >= self._chain_retry_at:
            try:
                self._waiting_now = None
                self._advance_chain(progress)
                progress.chain_ok = True
                self._chain_failures = 0
                self._last_error = None
                self._note_waiting(progress)
            except Exception as exc:
                # Node down or refusing: back off (checkpoints keep being recorded meanwhile).
                self._chain_checked = False
                self._chain_failures += 1
                self._chain_retry_at = self.clock() + min(0.25 * 2 ** self._chain_failures, 5.0)
                progress.error = f"{type(exc).__name__}: {exc}"
                if progress.error != self._last_error:
                    log.warning("anchoring step failed (will retry): %s", progress.error)
                self._last_error = progress.error
        self._flush_influx(progress)
        latest = self.store.latest(self.contract_address)
        anchored = self.store.latest(self.contract_address, "anchored")
        progress.latest_checkpoint = latest.size if latest else 0
        progress.latest_anchored = anchored.size if anchored else 0
        progress.pending = len(self.store.checkpoints(self.contract_address, "pending",
                                                      "submitted", "mined"))
        progress.waiting = self._waiting
        return progress

    def _note_waiting(self, progress: Progress) -> None:
        """Record (store, events) when the worker starts or stops holding its backlog back."""
        if self._waiting_now == self._waiting:
            return
        if self._waiting_now is not None:
            progress.events.append(f"waiting: {self._waiting_now}")
        else:
            progress.events.append("no longer waiting: fees within the caps")
        self._waiting = self._waiting_now
        self.store.set_waiting(self.contract_address, self._waiting)


class _PgWorkerLock:
    """On PostgreSQL: a session advisory lock in the ledger's database, so the rule holds for
    workers on different hosts too (freed when the holder's connection dies)."""

    def __init__(self, url: str) -> None:
        try:
            self._lock = SessionLock(url, LOCK_ANCHOR_WORKER)
        except BlockingIOError:
            raise WorkerLockedError("another anchor worker holds the ledger database's anchor "
                                    "lock") from None

    def release(self) -> None:
        self._lock.release()


class _WorkerLock:
    """An flock next to the ledger: one anchoring worker per ledger (freed even on SIGKILL)."""

    def __init__(self, ledger_path: Path) -> None:
        self.path = ledger_path.with_name(ledger_path.name + ".anchor.lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")  # noqa: SIM115 - held for the worker's lifetime
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise WorkerLockedError(f"another anchor worker holds {self.path}") from None

    def release(self) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def run_worker(settings: Settings, stop_event: threading.Event,
               on_progress: Callable[[Progress], None] | None = None,
               poll_interval: float = 0.5, resend_after: float | None = None) -> None:
    """Anchor until ``stop_event`` is set (safe to run in a thread or as ``vitalchain anchor run``).

    Errors talking to the chain or InfluxDB are retried every ``poll_interval``; errors that
    need an operator (wrong key, no contract configured, altered ledger) raise.
    """
    lock: _WorkerLock | _PgWorkerLock = (_PgWorkerLock(settings.ledger_url) if settings.ledger_url
                                         else _WorkerLock(settings.ledger_path))
    try:
        worker = AnchorWorker(settings, resend_after=resend_after)
        try:
            while not stop_event.is_set():
                progress = worker.tick()
                if on_progress is not None:
                    on_progress(progress)
                stop_event.wait(poll_interval)
        finally:
            worker.close()
    finally:
        lock.release()


def status(settings: Settings) -> dict[str, Any]:
    """What ``vitalchain anchor status`` prints: counts per checkpoint status, the latest
    anchored checkpoint, the unconfirmed one, the backlog and why it waits, and every reorg."""
    contract = chain.contract_address(settings)
    with AnchorStore(settings.ledger_target) as store, Ledger(settings.ledger_target) as ledger:
        all_cps = store.checkpoints(contract)
        anchored = store.latest(contract, "anchored")
        mined = store.latest(contract, "mined")
        reorgs = store.reorgs(contract)
        state = store.worker_state(contract)
        log_size = ledger.log_size()
    counts: dict[str, int] = {}
    for cp in all_cps:
        counts[cp.status] = counts.get(cp.status, 0) + 1
    return {
        "contract": contract, "checkpoints": counts, "log_size": log_size,
        "confirmations_required": settings.anchor_confirmations,
        "latest_anchored": None if anchored is None else
        {"size": anchored.size, "root": anchored.root, "tx_hash": anchored.tx_hash,
         "block_number": anchored.block_number},
        "pending_confirmation": None if mined is None else
        {"size": mined.size, "tx_hash": mined.tx_hash, "block_number": mined.block_number,
         "confirmations": mined.confirmations},
        "backlog_windows": log_size - (anchored.size if anchored else 0),
        "waiting": None if state is None or state.waiting is None else
        {"reason": state.waiting, "since_us": state.since_us, "updated_us": state.updated_us},
        "reorgs": [{"size": r.size, "tx_hash": r.tx_hash, "block_number": r.block_number,
                    "block_hash": r.block_hash, "canonical_hash": r.canonical_hash,
                    "was": r.was_status, "outcome": r.outcome, "detected_us": r.detected_us}
                   for r in reorgs],
    }
