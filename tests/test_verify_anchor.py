"""``--rpc``: the anchor checked over real JSON-RPC (web3 HTTPProvider) against a stub node."""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from click.testing import CliRunner

from vitalchain.app.commands.verify import verify_command
from vitalchain.core.integrity.example import EXAMPLE_ANCHOR, example_bundle
from vitalchain.core.verify import ANCHORED_SIGNATURE, ANCHORED_TOPIC, verify_bundle
from vitalchain.storage.chainrpc import JsonRpc


def test_event_topic_is_keccak_of_signature():
    web3 = pytest.importorskip("web3")
    assert web3.Web3.keccak(text=ANCHORED_SIGNATURE).hex().removeprefix("0x") == \
        ANCHORED_TOPIC.removeprefix("0x")


def honest_chain(bundle):
    a, cp = bundle["anchor"], bundle["checkpoint"]
    receipt = {
        "transactionHash": a["tx_hash"], "status": "0x1", "blockNumber": hex(a["block_number"]),
        "blockHash": a["block_hash"], "to": a["contract"],
        "logs": [
            {"logIndex": "0x0", "address": a["contract"].lower(), "removed": False,
             "topics": [ANCHORED_TOPIC, "0x" + cp["root"]],
             "data": "0x" + cp["size"].to_bytes(32, "big").hex()},
        ],
    }
    return {
        "chain_id": a["chain_id"],
        "receipts": {a["tx_hash"].lower(): receipt},
        "blocks": {a["block_number"]: {"number": hex(a["block_number"]),
                                       "hash": a["block_hash"]}},
    }


class StubNode:
    """A tiny Ethereum JSON-RPC server answering the three methods the verifier uses."""

    def __init__(self, state):
        self.state = state
        self.calls: list[str] = []
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                node.calls.append(req["method"])
                result = node.answer(req["method"], req["params"])
                body = json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": result})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def answer(self, method, params):
        s = self.state
        if method == "eth_chainId":
            return hex(s["chain_id"])
        if method == "eth_getTransactionReceipt":
            return s["receipts"].get(params[0].lower())
        if method == "eth_getBlockByNumber":
            return s["blocks"].get(int(params[0], 16))
        raise AssertionError(method)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def bundle():
    return example_bundle()


def test_anchor_verified_on_chain(bundle):
    with StubNode(honest_chain(bundle)) as node:
        report = verify_bundle(bundle, JsonRpc(node.url))
    assert report.status == "valid" and report.anchor_checked, report.to_dict()
    assert [s.step for s in report.steps][-5:] == [
        "anchor-rpc", "anchor-chain-id", "anchor-receipt", "anchor-log", "anchor-block"]
    assert node.calls == ["eth_chainId", "eth_getTransactionReceipt", "eth_getBlockByNumber"]


def mutate_receipt(fn):
    def apply(state):
        receipt = next(iter(state["receipts"].values()))
        fn(receipt)
    return apply


@pytest.mark.parametrize(
    ("change", "step"),
    [
        (lambda s: s.update(chain_id=1), "anchor-chain-id"),
        (lambda s: s["receipts"].clear(), "anchor-receipt"),
        (mutate_receipt(lambda r: r.update(status="0x0")), "anchor-receipt"),
        (mutate_receipt(lambda r: r.update(blockNumber="0x2b")), "anchor-receipt"),
        (mutate_receipt(lambda r: r.update(blockHash="0x" + "11" * 32)), "anchor-receipt"),
        (mutate_receipt(lambda r: r["logs"][0].update(logIndex="0x1")), "anchor-log"),
        (mutate_receipt(lambda r: r["logs"][0].update(address="0x" + "22" * 20)), "anchor-log"),
        (mutate_receipt(lambda r: r["logs"][0]["topics"].__setitem__(0, "0x" + "33" * 32)),
         "anchor-log"),
        (mutate_receipt(lambda r: r["logs"][0]["topics"].__setitem__(1, "0x" + "44" * 32)),
         "anchor-log"),
        (mutate_receipt(lambda r: r["logs"][0]["topics"].append("0x" + "55" * 32)), "anchor-log"),
        (mutate_receipt(lambda r: r["logs"][0].update(data="0x" + "00" * 31 + "04")),
         "anchor-log"),
        (mutate_receipt(lambda r: r["logs"][0].update(removed=True)), "anchor-log"),
        (lambda s: s["blocks"][42].update(hash="0x" + "66" * 32), "anchor-block"),
    ],
)
def test_anchor_failures_name_the_step(bundle, change, step):
    state = honest_chain(bundle)
    change(state)
    with StubNode(state) as node:
        report = verify_bundle(bundle, JsonRpc(node.url))
    assert report.status == "invalid" and report.failed_step == step, report.to_dict()


def test_size_and_root_forgery_caught_by_anchor(bundle):
    """Offline, a checkpoint size is only claimed; the anchored event data pins it."""
    state = honest_chain(bundle)
    forged = copy.deepcopy(bundle)
    forged["checkpoint"]["size"] = forged["window_proof"]["size"] = 4  # same fold as size 3
    assert verify_bundle(forged).ok  # offline the path alone cannot tell (documented)
    with StubNode(state) as node:
        report = verify_bundle(forged, JsonRpc(node.url))
    assert report.failed_step == "anchor-log"


def test_null_anchor_with_rpc_is_not_anchored(bundle):
    bundle["anchor"] = None
    with StubNode(honest_chain(example_bundle())) as node:
        report = verify_bundle(bundle, JsonRpc(node.url))
    assert report.status == "invalid" and report.failed_step == "anchor"
    assert "not anchored" in report.steps[-1].detail
    assert node.calls == []


def test_unreachable_rpc(bundle):
    report = verify_bundle(bundle, JsonRpc("http://127.0.0.1:9"))
    assert report.status == "invalid" and report.failed_step == "anchor-rpc"


def test_cli_with_rpc(bundle, tmp_path):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle))
    with StubNode(honest_chain(bundle)) as node:
        r = CliRunner().invoke(verify_command, [str(path), "--rpc", node.url])
    assert r.exit_code == 0 and "VALID" in r.output and "offline" not in r.output
    assert EXAMPLE_ANCHOR["contract"] in r.output
    assert f"verdict: hashes valid, anchor verified on chain (block {EXAMPLE_ANCHOR['block_number']})" \
        in r.output


def _new_block_42(state):
    state["blocks"][42] = {"number": hex(42), "hash": "0x" + "77" * 32}


@pytest.mark.parametrize(
    "change",
    [
        # the transaction vanished with its block (anvil_reorg drops it)
        lambda s: (s["receipts"].clear(), _new_block_42(s)),
        # the transaction was mined again, in another block
        lambda s: (mutate_receipt(lambda r: r.update(blockNumber="0x2c",
                                                     blockHash="0x" + "88" * 32))(s),
                   _new_block_42(s)),
        # the chain is shorter than the anchor's block number now
        lambda s: (s["receipts"].clear(), s["blocks"].clear()),
    ],
    ids=["receipt-gone", "mined-elsewhere", "chain-shorter"],
)
def test_reorganised_anchor_says_so_and_to_fetch_a_fresh_proof(bundle, change):
    state = honest_chain(bundle)
    change(state)
    with StubNode(state) as node:
        report = verify_bundle(bundle, JsonRpc(node.url))
    assert report.status == "invalid" and report.failed_step == "anchor-block", report.to_dict()
    detail = report.steps[-1].detail
    assert "reorganised" in detail and "fetch a fresh proof" in detail, detail


def test_missing_receipt_with_the_block_still_canonical_is_not_called_a_reorg(bundle):
    state = honest_chain(bundle)
    state["receipts"].clear()
    with StubNode(state) as node:
        report = verify_bundle(bundle, JsonRpc(node.url))
    assert report.failed_step == "anchor-receipt"
    assert "reorganised" not in report.steps[-1].detail


def test_unreachable_rpc_verdict_does_not_claim_the_anchor(bundle):
    report = verify_bundle(bundle, JsonRpc("http://127.0.0.1:9"))
    assert report.summary.startswith("hashes valid, anchor not checked: the node could not be asked")
    assert report.to_dict()["anchor_block"] is None
