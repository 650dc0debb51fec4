"""On-chain check of a bundle's anchor: the checkpoint root really was emitted by the contract.

Talks JSON-RPC through web3's ``HTTPProvider`` (imported lazily so offline use needs no web3)
and compares raw hex, so nothing depends on web3's result formatters.  The anchor contract
emits ``event Anchored(bytes32 indexed root, uint64 size)``:
``topics == [keccak256("Anchored(bytes32,uint64)"), root]``, ``data == uint64 size`` as one
32-byte big-endian ABI word.
"""

from __future__ import annotations

from typing import Any

from .report import VerificationReport

# keccak256(b"Anchored(bytes32,uint64)"); tests recompute it with web3.
ANCHORED_TOPIC = "0x41c3f410f5c8ac36bb46b1dccef0de0f964087c9e688795fa02ecfa2c20b3fe4"
ANCHORED_SIGNATURE = "Anchored(bytes32,uint64)"


class RpcError(RuntimeError):
    """The node could not be reached or answered with a JSON-RPC error."""


class JsonRpc:
    """Minimal JSON-RPC caller over web3's HTTPProvider (lazy import)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        from web3 import HTTPProvider  # lazy: offline verification needs no web3

        self.provider = HTTPProvider(url, request_kwargs={"timeout": timeout})

    def call(self, method: str, params: list[Any]) -> Any:
        try:
            response = self.provider.make_request(method, params)  # type: ignore[arg-type]
        except Exception as exc:  # connection refused, timeout, bad HTTP status
            raise RpcError(f"{method}: {exc}") from exc
        if "error" in response:
            raise RpcError(f"{method}: {response['error']}")
        return response.get("result")


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


def verify_anchor(
    bundle: dict[str, Any], rpc_url: str, report: VerificationReport, rpc: Any = None
) -> None:
    """Check ``bundle["anchor"]`` against the chain at ``rpc_url``; append steps to ``report``.

    ``rpc`` (an object with ``call(method, params)``) may be injected by tests.
    """
    anchor = bundle["anchor"]
    checkpoint = bundle["checkpoint"]
    report.anchor_checked = True
    if anchor is None:
        report.add("anchor", False, "not anchored: the bundle's anchor is null")
        return
    try:
        rpc = rpc or JsonRpc(rpc_url)
        chain_id = _int(rpc.call("eth_chainId", []))
    except (RpcError, ImportError) as exc:
        report.add("anchor-rpc", False, f"cannot query {rpc_url}: {exc}")
        return
    report.add("anchor-rpc", True, rpc_url)
    if not report.add("anchor-chain-id", chain_id == anchor["chain_id"],
                      f"node chain id {chain_id}, bundle says {anchor['chain_id']}"):
        return

    try:
        receipt = rpc.call("eth_getTransactionReceipt", [anchor["tx_hash"]])
    except RpcError as exc:
        report.add("anchor-receipt", False, str(exc))
        return
    if not isinstance(receipt, dict):
        report.add("anchor-receipt", False, f"no receipt for transaction {anchor['tx_hash']}")
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
                       f" {anchor['block_hash']} (reorged?)"):
        report.anchor_block = anchor["block_number"]
