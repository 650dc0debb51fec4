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
as anchored after ``anchor_confirmations`` blocks (its block hash re-checked each time, so a
reorg sends it back to waiting for its transaction).
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

from vitalchain.anchor import chain
from web3.exceptions import TransactionNotFound

from vitalchain.config import Settings
from vitalchain.core.timeutil import now_us
from vitalchain.errors import Altered, Refused
from vitalchain.storage.anchors import AnchorStore, AnchorTx, Checkpoint
from vitalchain.storage.influx import InfluxClient, Point
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.logmirror import LogMirror

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
        self.ledger = Ledger(settings.ledger_path)
        self.store = AnchorStore(settings.ledger_path)
        self.mirror = LogMirror(self.ledger)
        self.log = self.mirror.log
        self._influx_retry_at = 0.0
        self._chain_retry_at = 0.0
        self._chain_failures = 0
        self._last_error: str | None = None
        self._chain_checked = False
        self._check_recorded_roots()

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
        progress.events.append(f"replacing nonce {nonce} ({reason}) with checkpoint {target.size}")
        self._send(target, nonce, floor, progress)
        return True

    def _confirm(self, progress: Progress) -> bool:
        """Count confirmations of mined checkpoints; returns True while one is unconfirmed."""
        waiting = False
        head = self.w3.eth.block_number
        for cp in self.store.checkpoints(self.contract_address, "mined"):
            assert cp.block_number is not None
            block = self.w3.eth.get_block(cp.block_number)
            if "0x" + bytes(block["hash"]).hex() != cp.block_hash:
                progress.events.append(f"block {cp.block_number} of {cp.size} reorged away")
                self.store.set_status(self.contract_address, cp.size, "submitted")
                if cp.tx_hash:
                    self.store.set_tx_status(cp.tx_hash, "sent")
                waiting = True
                continue
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
              progress: Progress) -> None:
        _, block = self.contract.functions.checkpoints(
            chain.root_bytes(cp.root)).call()
        if block:
            self._reconcile(cp, progress)
            return
        latest_size = self.contract.functions.latestSize().call()
        if latest_size >= cp.size:
            raise chain.ChainError(
                f"contract {self.contract_address} already holds size {latest_size} >= "
                f"{cp.size} from outside this ledger: is another ledger anchoring here?")
        if nonce is None:
            nonce = self.w3.eth.get_transaction_count(self.account.address, "pending")
        fees = chain.current_fees(self.w3)
        if floor is not None:
            fees = floor.bumped(fees)
        fn = self.contract.functions.anchor(chain.root_bytes(cp.root), cp.size)
        gas = int(fn.estimate_gas({"from": self.account.address}) * chain.GAS_MARGIN)
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
        progress.events.append(f"sent {cp.size} as {tx_hash} (nonce {nonce})")

    def _advance_chain(self, progress: Progress) -> None:
        if not self._chain_checked:
            chain.check_chain(self.w3, self.settings)
            if not chain.code_matches(self.w3, self.contract_address):
                raise chain.ChainError(f"no VitalAnchor code at {self.contract_address}: "
                                       "deploy first (`vitalchain anchor deploy`)")
            self._chain_checked = True
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
        if not todo or self.clock() < self._influx_retry_at:
            return

        async def write() -> None:
            async with InfluxClient(self.settings, retries=1, backoff_s=0.2) as client:
                await client.write([anchor_point(cp) for cp in todo])

        try:
            asyncio.run(write())
        except Exception as exc:  # kept in the store; retried later
            self._influx_retry_at = self.clock() + 5.0
            progress.events.append(f"influx write deferred: {exc}")
            return
        for cp in todo:
            self.store.mark_influx_written(self.contract_address, cp.size)

    # --- one step -------------------------------------------------------------------------
    def tick(self) -> Progress:
        progress = Progress()
        size = self.mirror.sync()
        progress.log_size = size
        self._maybe_checkpoint(size, progress)
        if self.clock() >= self._chain_retry_at:
            try:
                self._advance_chain(progress)
                progress.chain_ok = True
                self._chain_failures = 0
                self._last_error = None
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
        return progress


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
    lock = _WorkerLock(settings.ledger_path)
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
    """Counts per checkpoint status and the latest anchored checkpoint (for the CLI and demo)."""
    contract = chain.contract_address(settings)
    with AnchorStore(settings.ledger_path) as store:
        all_cps = store.checkpoints(contract)
        anchored = store.latest(contract, "anchored")
    counts: dict[str, int] = {}
    for cp in all_cps:
        counts[cp.status] = counts.get(cp.status, 0) + 1
    return {"contract": contract, "checkpoints": counts,
            "latest_anchored": None if anchored is None else
            {"size": anchored.size, "root": anchored.root, "tx_hash": anchored.tx_hash,
             "block_number": anchored.block_number}}
