"""Checkpoint checks: recorded roots against the ledger's log, and against the chain itself.

Three independent sources must agree: the ledger (log roots recomputed from its window leaves),
the anchor worker's records (size, root, tx, block) and the contract's ``Anchored`` events.  The
chain is asked directly (receipts and logs), never through the worker's records, so a dropped or
edited record shows up as an anchor nobody recorded or a record the chain does not back.
"""

from __future__ import annotations

import itertools
from typing import Any

from web3 import Web3
from web3.exceptions import TransactionNotFound

from vitalchain.anchor import chain
from vitalchain.audit.report import AuditReport, CheckpointFinding
from vitalchain.config import Settings
from vitalchain.core.integrity import MerkleLog, ProofError, verify_consistency
from vitalchain.errors import Unavailable
from vitalchain.storage.ledger_view import LedgerView

ON_CHAIN_STATUSES = ("mined", "anchored")


class ChainUnavailable(Unavailable):
    """The Ethereum node could not be asked (down, wrong chain)."""


def _hex(value: Any) -> str:
    return bytes(value).hex()


def _check_on_chain(w3: Web3, contract: str, cp: Any) -> str | None:
    """Why the chain does not back this record, or None when it does."""
    if not cp.tx_hash:
        return f"status {cp.status} but no transaction recorded"
    try:
        receipt = w3.eth.get_transaction_receipt(cp.tx_hash)
    except TransactionNotFound:
        return f"transaction {cp.tx_hash} is not on chain"
    entry = chain.anchored_log_in_receipt(dict(receipt), contract, cp.root)
    if entry is None:
        return f"transaction {cp.tx_hash} emitted no Anchored event for this root"
    size = int.from_bytes(bytes(entry["data"]), "big")
    if size != cp.size:
        return f"the Anchored event in {cp.tx_hash} has size {size}"
    if int(entry["blockNumber"]) != cp.block_number:
        return f"anchored in block {entry['blockNumber']}, recorded block {cp.block_number}"
    if cp.block_hash and "0x" + _hex(entry["blockHash"]) != cp.block_hash.lower():
        return f"block {cp.block_number} hash differs from the recorded {cp.block_hash}"
    return None


def _chain_events(w3: Web3, contract: str, to_block: int) -> list[tuple[int, str]]:
    logs = w3.eth.get_logs({"address": Web3.to_checksum_address(contract), "fromBlock": 0,
                            "toBlock": to_block, "topics": [chain.ANCHORED_TOPIC]})
    return [(int.from_bytes(bytes(lg["data"]), "big"), _hex(lg["topics"][1]))
            for lg in logs if not lg.get("removed")]


def check_checkpoints(settings: Settings, view: LedgerView, report: AuditReport,
                      first_window_index: int | None, horizon_size: int | None = None) -> None:
    """Append checkpoint findings to ``report`` (blocking: web3 is synchronous).

    Read in an order that a running anchor worker cannot race: the chain's head block first
    (events after it are not judged), then the worker's records (a checkpoint is recorded before
    its transaction is sent, so every event up to that block has its record), then the ledger's
    log (a checkpoint is only ever recorded over windows already in the log).
    """
    if not settings.anchor_contract:
        report.notes.append("checkpoints not checked: no anchor contract configured "
                            "(VITALCHAIN_ANCHOR_CONTRACT)")
        return
    try:
        contract = chain.contract_address(settings)
    except chain.ChainError as exc:
        raise ChainUnavailable(str(exc)) from exc
    w3 = chain.connect(settings, timeout=10.0, retry=False)
    try:
        chain.check_chain(w3, settings)
        head = int(w3.eth.block_number)
    except chain.ChainError as exc:
        raise ChainUnavailable(str(exc)) from exc
    except Exception as exc:  # web3 raises requests/aiohttp errors for an unreachable node
        raise ChainUnavailable(f"Ethereum node unreachable: {exc}") from exc
    records = view.checkpoints(contract)
    log = MerkleLog(view.leaf_hashes())
    report.checkpoints_checked = len(records)

    def ledger_disagrees(size: int, root: str) -> str | None:
        if size > log.size:
            return f"the ledger's log has only {log.size} windows"
        if log.root(size).hex() != root:
            return f"the ledger's log root at size {size} is {log.root(size).hex()}"
        return None

    for cp in records:
        why = ledger_disagrees(cp.size, cp.root)
        if why:
            kind = "beyond_log" if cp.size > log.size else "root_mismatch"
            report.checkpoints.append(CheckpointFinding(kind, cp.size, cp.root, f"recorded, but {why}"))

    anchored = [cp for cp in records if cp.status in ON_CHAIN_STATUSES]
    for cp in anchored:
        why = _check_on_chain(w3, contract, cp)
        if why:
            report.checkpoints.append(CheckpointFinding("not_on_chain", cp.size, cp.root, why))
    for old, new in itertools.pairwise(anchored):
        if new.size > log.size:
            continue  # already reported as beyond_log
        try:
            verify_consistency(old.size, new.size, bytes.fromhex(old.root), bytes.fromhex(new.root),
                               log.consistency_proof(old.size, new.size))
        except (ProofError, ValueError) as exc:
            report.checkpoints.append(CheckpointFinding(
                "inconsistent", new.size, new.root,
                f"not provably an extension of checkpoint {old.size} ({exc})"))
    recorded = {cp.root for cp in records}
    for size, root in _chain_events(w3, contract, head):
        if root in recorded:
            continue
        why = ledger_disagrees(size, root)
        report.checkpoints.append(CheckpointFinding(
            "unrecorded_anchor", size, root,
            "anchored on chain but no checkpoint record" + (f"; {why}" if why else "")))
    report.chain_checked = True
    covered = max((cp.size for cp in records if cp.status == "anchored"), default=0)
    judged = log.size if horizon_size is None else min(log.size, horizon_size)
    if first_window_index is not None and judged > covered:
        report.notes.append(f"windows {max(covered, first_window_index)}..{judged - 1} of the log "
                            "are not covered by an anchored checkpoint yet")
