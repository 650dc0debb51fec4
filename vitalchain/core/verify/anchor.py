"""On-chain check of a bundle's anchor: the checkpoint root really was emitted by the contract.

Asks the node through a :class:`~vitalchain.core.verify.rpc.ChainRpc` the caller passes in (the
core does no I/O; :class:`vitalchain.storage.chainrpc.JsonRpc` is the HTTP one) and compares raw
hex, so nothing depends on web3's result formatters.  The anchor contract
emits ``event Anchored(bytes32 indexed root, uint64 size)``:
``topics == [keccak256("Anchored(bytes32,uint64)"), root]``, ``data == uint64 size`` as one
32-byte big-endian ABI word.
"""

from __future__ import annotations

from typing import Any

from .report import VerificationReport
from .rpc import ChainRpc, RpcError

# keccak256(b"Anchored(bytes32,uint64)"); tests recompute it with web3.
ANCHORED_TOPIC = "0x41c3f410f5c8ac36bb46b1dccef0de0f964087c9e688795fa02ecfa2c20b3fe4"
ANCHORED_SIGNATURE = "Anchored(bytes32,uint64)"


def _int(value: Any) -> int | None:
    if isinstance(value, str) and value.startswith("0x"):
        return int(value, 16)
    if isinstance(value, int):
        return value
    return None


def _same_hex(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and a.lower() == b.lower()


def size_word(size: int) -> str:
    """ABI encoding of ``uint64 size`` in event data: 0x + 32-byte big-endian."""
    return "0x" + size.to_bytes(32, "big").hex()


REORG_ADVICE = ("the anchor was reorganised out of the canonical chain: this bundle no longer "
                "proves anything on chain; fetch a fresh proof (the anchoring worker anchors "
                "the checkpoint again)")


def _reorged(rpc: ChainRpc, anchor: dict[str, Any], report: VerificationReport) -> bool:
    """If the anchor's block is no longer canonical, fail ``anchor-block`` saying so.

    Asked only when the receipt is missing or names another block: that alone could be a
    forged transaction hash, but a canonical block at the anchor's height with another hash
    means the chain the anchor was in has been replaced (a reorg).
    """
    try:
        block = rpc.call("eth_getBlockByNumber", [hex(anchor["block_number"]), False])
    except RpcError:
        return False  # cannot tell: the receipt step reports what it saw
    got = block.get("hash") if isinstance(block, dict) else None
    if _same_hex(got, anchor["block_hash"]):
        return False
    now = f"is now {got}" if got else "does not exist (the chain is shorter now)"
    report.add("anchor-block", False,
               f"block {anchor['block_number']} {now}, not the anchor's {anchor['block_hash']}: "
               + REORG_ADVICE)
    return True


def verify_anchor(bundle: dict[str, Any], rpc: ChainRpc, report: VerificationReport) -> None:
    """Check ``bundle["anchor"]`` (and ``bundle["checkpoint"]``) on the chain ``rpc`` reaches;
    append the steps to ``report``."""
    anchor = bundle["anchor"]
    checkpoint = bundle["checkpoint"]
    report.anchor_checked = True
    if anchor is None:
        report.add("anchor", False, "not anchored: the bundle's anchor is null")
        return
    try:
        chain_id = _int(rpc.call("eth_chainId", []))
    except RpcError as exc:
        report.add("anchor-rpc", False, f"cannot query {rpc.endpoint}: {exc}")
        return
    report.add("anchor-rpc", True, rpc.endpoint)
    if not report.add("anchor-chain-id", chain_id == anchor["chain_id"],
                      f"node chain id {chain_id}, bundle says {anchor['chain_id']}"):
        return

    try:
        receipt = rpc.call("eth_getTransactionReceipt", [anchor["tx_hash"]])
    except RpcError as exc:
        report.add("anchor-receipt", False, str(exc))
        return
    if not isinstance(receipt, dict):
        if _reorged(rpc, anchor, report):
            return
        report.add("anchor-receipt", False, f"no receipt for transaction {anchor['tx_hash']}")
        return
    if not _same_hex(receipt.get("blockHash"), anchor["block_hash"]) and _reorged(rpc, anchor,
                                                                                  report):
        return
    problems = []
    if _int(receipt.get("status")) != 1:
        problems.append(f"status {receipt.get('status')!r} (transaction reverted)")
    if _int(receipt.get("blockNumber")) != anchor["block_number"]:
        problems.append(f"block number {_int(receipt.get('blockNumber'))}"
                        f" != {anchor['block_number']}")
    if not _same_hex(receipt.get("blockHash"), anchor["block_hash"]):
        problems.append(f"block hash {receipt.get('blockHash')} != {anchor['block_hash']}")
    if not report.add("anchor-receipt", not problems,
                      "; ".join(problems) or f"mined in block {anchor['block_number']}"):
        return

    logs = receipt.get("logs") or []
    log = next((lg for lg in logs if _int(lg.get("logIndex")) == anchor["log_index"]), None)
    problems = []
    if log is None:
        problems.append(f"receipt has no log with logIndex {anchor['log_index']}")
    else:
        topics = [t.lower() for t in log.get("topics") or [] if isinstance(t, str)]
        if not _same_hex(log.get("address"), anchor["contract"]):
            problems.append(f"log is from {log.get('address')}, not {anchor['contract']}")
        if log.get("removed"):
            problems.append("log was removed (reorg)")
        if len(topics) != 2 or topics[0] != ANCHORED_TOPIC:
            problems.append(f"log is not {ANCHORED_SIGNATURE} (topics {topics})")
        elif topics[1] != "0x" + checkpoint["root"]:
            problems.append(f"anchored root {topics[1]} != checkpoint root {checkpoint['root']}")
        if not _same_hex(log.get("data"), size_word(checkpoint["size"])):
            problems.append(f"anchored size data {log.get('data')} != {checkpoint['size']}")
    if not report.add("anchor-log", not problems, "; ".join(problems)
                      or f"Anchored(root, {checkpoint['size']}) by {anchor['contract']}"):
        return

    try:
        block = rpc.call("eth_getBlockByNumber", [hex(anchor["block_number"]), False])
    except RpcError as exc:
        report.add("anchor-block", False, str(exc))
        return
    got = block.get("hash") if isinstance(block, dict) else None
    if report.add("anchor-block", _same_hex(got, anchor["block_hash"]),
                  "block is canonical" if _same_hex(got, anchor["block_hash"])
                  else f"canonical block {anchor['block_number']} is {got}, not the anchor's"
                       f" {anchor['block_hash']}: " + REORG_ADVICE):
        report.anchor_block = anchor["block_number"]
