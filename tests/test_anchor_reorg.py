"""Reorgs on a real anvil (``anvil_reorg``): an anchor reorganised out before and after it was
confirmed is noticed, recorded and anchored again; proofs handed out before fail on chain with
advice to fetch a fresh one, fresh proofs verify, and proofs are only handed out as anchored
after the configured confirmations.

Every test ends with the invariants of ``test_anchor_worker`` checked against the canonical
chain: no root anchored twice, sizes strictly increasing, every checkpoint anchored or
superseded by a larger anchored one, and the whole log anchored.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.common_support import wait_until
from tests.test_anchor_worker import (
    anchor_settings,
    check_invariants,
    latest_anchored,
    worker_thread,
)
from vitalchain.anchor import chain
from vitalchain.anchor.deploy import deploy
from vitalchain.anchor.proofs import ProofService
from vitalchain.anchor.synthetic import SyntheticSealer, write_readings
from vitalchain.app.commands.anchor import anchor_group, proof_group
from vitalchain.app.commands.verify import verify_command
from vitalchain.config import Settings
from vitalchain.core.verify import verify_bundle
from vitalchain.storage.anchors import AnchorStore, Checkpoint
from vitalchain.storage.chainrpc import JsonRpc
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger

REORG_DEPTH = 15


def reorg_settings(isolated: Settings, anvil: Settings, tmp_path: Path,
                   **overrides: object) -> tuple[Settings, int]:
    """Settings on the shared InfluxDB and this test's own anvil; returns the deploy block."""
    values: dict[str, object] = dict(
        state_dir=tmp_path, eth_port=anvil.eth_port, anchor_every_windows=2,
        anchor_interval_seconds=0.5, anchor_confirmations=2)
    values.update(overrides)
    base = isolated.with_overrides(**values)
    result = deploy(base, record=False)
    assert result.block_number is not None
    return base.with_overrides(anchor_contract=result.address), result.block_number


def seal(settings: Settings, sealer: SyntheticSealer, windows: int) -> list[dict[str, Any]]:
    sealed = [sealer.seal(3) for _ in range(windows)]
    write_readings(settings, [(readings, header) for _, readings, header in sealed])
    return [r for _, readings, _ in sealed for r in readings]


def checkpoint(settings: Settings, *statuses: str) -> Checkpoint | None:
    with AnchorStore(settings.ledger_path) as store:
        return store.latest(settings.anchor_contract, *statuses)


def reorg(settings: Settings, depth: int, keep_above: int) -> None:
    """Replace the newest ``depth`` blocks (never the contract's own deploy block)."""
    w3 = chain.connect(settings)
    assert w3.eth.block_number - depth >= keep_above, "the reorg would remove the contract"
    head = w3.eth.get_block("latest")
    answer = w3.provider.make_request("anvil_reorg", [depth, []])  # type: ignore[arg-type]
    assert "error" not in answer, answer
    assert w3.eth.get_block(head["number"])["hash"] != head["hash"]


def anchor_status(settings: Settings) -> dict[str, Any]:
    result = CliRunner().invoke(anchor_group, ["status"], obj=settings)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def influx_anchor_rows(settings: Settings) -> list[dict[str, Any]]:
    async def rows() -> list[dict[str, Any]]:
        async with InfluxClient(settings) as client:
            return await client.query('SELECT * FROM "anchors" ORDER BY time')
    return asyncio.run(rows())


@pytest.mark.e2e
def test_reorg_before_confirmation_is_anchored_again(isolated: Settings, fresh_stack,
                                                     tmp_path: Path) -> None:
    """Shallower than the confirmation depth: the proof was only ever pending-confirmation."""
    anvil = fresh_stack(("anvil",)).settings
    settings, deployed_at = reorg_settings(isolated, anvil, tmp_path, anchor_confirmations=8)
    ledger = Ledger(settings.ledger_path)
    readings = seal(settings, SyntheticSealer(ledger, devices=2), 2)
    reading = readings[0]
    with worker_thread(settings) as seen:
        mined = wait_until(lambda: checkpoint(settings, "mined"), 30, "an anchor mined")
        with ProofService(settings) as service:
            result = service.proof(reading["device_id"], reading["seq"])
        # Mined but unconfirmed: not handed out as anchored.
        assert result.status == "pending-confirmation", result.summary()
        assert result.bundle["anchor"] is None
        assert "of 8 confirmations" in result.summary()
        assert verify_bundle(result.bundle).status == "pending"
        cli = CliRunner().invoke(proof_group, [reading["device_id"], str(reading["seq"])],
                                 obj=settings)
        assert cli.exit_code == 0 and "pending-confirmation" in cli.stderr, cli.output
        status = anchor_status(settings)
        assert status["pending_confirmation"]["size"] == mined.size

        w3 = chain.connect(settings)
        assert mined.block_number is not None
        depth = w3.eth.block_number - mined.block_number + 1
        assert depth < settings.anchor_confirmations
        reorg(settings, depth, deployed_at)
        wait_until(lambda: latest_anchored(settings) == ledger.log_size(), 60,
                   "the log anchored again after the reorg")
    with AnchorStore(settings.ledger_path) as store:
        (record,) = store.reorgs(settings.anchor_contract)
        statuses = {t.tx_hash: t.status for t in store.txs(settings.anchor_contract)}
    assert (record.size, record.tx_hash, record.block_number, record.block_hash) == \
        (mined.size, mined.tx_hash, mined.block_number, mined.block_hash)
    assert record.was_status == "mined" and record.outcome == "gone"
    now = checkpoint(settings, "anchored")
    assert now is not None and now.block_hash != mined.block_hash
    # Sent anew: other bytes (fees moved) leave the old transaction "reorged"; the very same
    # bytes (fees stood still) are the same transaction, mined again.
    assert statuses[mined.tx_hash] == ("reorged" if now.tx_hash != mined.tx_hash else "mined")
    events = check_invariants(settings)
    assert (now.size, now.root, now.tx_hash) in events
    assert any("REORG" in e for p in seen for e in p.events)
    with ProofService(settings) as service:
        fresh = service.proof(reading["device_id"], reading["seq"])
    assert fresh.status == "anchored"
    assert verify_bundle(fresh.bundle, JsonRpc(settings.eth_rpc_url)).status == "valid"
    ledger.close()


@pytest.mark.e2e
def test_reorg_after_confirmation_fails_old_proofs_and_is_anchored_again(
        isolated: Settings, fresh_stack, tmp_path: Path) -> None:
    """Deeper than the confirmation depth, with the worker running throughout (the issue's
    scenario): the old bundle fails at anchor-block saying why, a fresh one verifies."""
    anvil = fresh_stack(("anvil",)).settings
    settings, deployed_at = reorg_settings(isolated, anvil, tmp_path)
    ledger = Ledger(settings.ledger_path)
    readings = seal(settings, SyntheticSealer(ledger, devices=2), 2)
    reading = readings[-1]
    rpc = settings.eth_rpc_url
    with worker_thread(settings) as seen:
        anchored = wait_until(lambda: checkpoint(settings, "anchored"), 30, "an anchor confirmed")
        assert anchored.size == ledger.log_size() and anchored.block_number is not None
        with ProofService(settings) as service:
            old = service.proof(reading["device_id"], reading["seq"])
        assert old.status == "anchored" and old.bundle["anchor"]["tx_hash"] == anchored.tx_hash
        assert verify_bundle(old.bundle, JsonRpc(rpc)).status == "valid"
        wait_until(lambda: len(influx_anchor_rows(settings)) == 1, 15, "the anchors point")
        w3 = chain.connect(settings)
        # The depth: 15 blocks, far deeper than the 2 confirmations.
        wait_until(lambda: w3.eth.block_number - anchored.block_number + 1 >= REORG_DEPTH, 40,
                   f"the anchor {REORG_DEPTH} blocks deep")
        reorg(settings, REORG_DEPTH, deployed_at)
        reorged_at = time.monotonic()

        report = verify_bundle(old.bundle, JsonRpc(rpc))
        assert report.status == "invalid" and report.failed_step == "anchor-block", \
            report.to_dict()
        detail = report.steps[-1].detail
        assert "reorganised" in detail and "fetch a fresh proof" in detail, detail

        wait_until(lambda: anchor_status(settings)["reorgs"], 30, "the reorg noticed")
        noticed_after = time.monotonic() - reorged_at
        wait_until(lambda: (cp := checkpoint(settings, "anchored")) is not None
                   and cp.block_hash != anchored.block_hash, 60,
                   "the checkpoint anchored again")
        reanchored_after = time.monotonic() - reorged_at
    # The issue saw nothing in 40 s; with 1 s blocks and 2 confirmations this takes a few.
    print(f"depth-{REORG_DEPTH} reorg noticed after {noticed_after:.2f} s, anchored again after "
          f"{reanchored_after:.2f} s")
    assert noticed_after < 10 and reanchored_after < 30, (noticed_after, reanchored_after)
    status = anchor_status(settings)
    (record,) = status["reorgs"]
    assert record["size"] == anchored.size and record["tx_hash"] == anchored.tx_hash
    assert record["was"] == "anchored" and record["outcome"] == "gone"
    assert record["block_hash"] == anchored.block_hash
    assert record["canonical_hash"] not in (None, anchored.block_hash)
    assert status["latest_anchored"]["size"] == ledger.log_size()
    assert status["latest_anchored"]["block_number"] > anchored.block_number
    assert status["backlog_windows"] == 0
    assert any("REORG" in e for p in seen for e in p.events)

    check_invariants(settings)
    with ProofService(settings) as service:
        fresh = service.proof(reading["device_id"], reading["seq"])
    assert fresh.status == "anchored" and fresh.bundle["anchor"] != old.bundle["anchor"]
    assert verify_bundle(fresh.bundle, JsonRpc(rpc)).status == "valid"
    assert verify_bundle(old.bundle, JsonRpc(rpc)).failed_step == "anchor-block"
    # The same through `vitalchain verify --rpc`, as a third party would run it.
    for name, bundle, code in (("fresh", fresh.bundle, 0), ("old", old.bundle, 1)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(bundle))
        result = CliRunner().invoke(verify_command, [str(path), "--rpc", rpc])
        assert result.exit_code == code, result.output
    assert "anchor-block" in result.output and "fetch a fresh proof" in result.output
    # InfluxDB's anchors measurement: the vanished anchor is marked reorged, the new one added.
    rows = wait_until(lambda: len(influx_anchor_rows(settings)) == 2
                      and influx_anchor_rows(settings), 15, "both anchors points")
    assert [(r["tx_hash"], r["status"]) for r in rows] == \
        [(anchored.tx_hash, "reorged"), (fresh.bundle["anchor"]["tx_hash"], "anchored")]
    ledger.close()


@pytest.mark.e2e
def test_anchor_mined_again_in_another_block_restarts_its_confirmations(fresh_stack,
                                                                        tmp_path: Path) -> None:
    """A reorg that re-includes our transaction (as real chains usually do): same transaction,
    new block; recorded, confirmed afresh, no second transaction."""
    settings = anchor_settings(fresh_stack(("anvil",)).settings, tmp_path,
                               anchor_confirmations=6)
    ledger = Ledger(settings.ledger_path)
    SyntheticSealer(ledger).seal(2)
    w3 = chain.connect(settings)
    with worker_thread(settings):
        mined = wait_until(lambda: checkpoint(settings, "mined"), 30, "an anchor mined")
        assert mined.block_number is not None
        with AnchorStore(settings.ledger_path) as store:
            (tx,) = store.txs(settings.anchor_contract)
        depth = w3.eth.block_number - mined.block_number + 1
        answer = w3.provider.make_request("anvil_reorg", [depth, [[tx.raw, depth - 1]]])  # type: ignore[arg-type]
        assert "error" not in answer, answer
        moved = w3.eth.get_transaction_receipt(tx.tx_hash)
        assert "0x" + bytes(moved["blockHash"]).hex() != mined.block_hash
        wait_until(lambda: latest_anchored(settings) == 1, 30, "anchored in its new block")
    with AnchorStore(settings.ledger_path) as store:
        (record,) = store.reorgs(settings.anchor_contract)
        txs = store.txs(settings.anchor_contract)
    assert record.outcome == "remined" and record.block_hash == mined.block_hash
    assert [(t.tx_hash, t.status) for t in txs] == [(tx.tx_hash, "mined")]
    cp = checkpoint(settings, "anchored")
    assert cp is not None and cp.block_hash == "0x" + bytes(moved["blockHash"]).hex()
    check_invariants(settings)
    ledger.close()


@pytest.mark.e2e
def test_transaction_in_flight_behind_a_vanished_nonce_is_not_waited_on(fresh_stack,
                                                                        tmp_path: Path) -> None:
    """Anchor 1 (nonce n) is reorganised out while anchor 2 (nonce n+1) waits in the pool:
    n+1 can never be mined before n, so the worker abandons it and anchors the latest
    checkpoint on nonce n; the stale transaction, if ever mined, changes nothing."""
    settings = anchor_settings(fresh_stack(("anvil",)).settings, tmp_path)
    ledger = Ledger(settings.ledger_path)
    sealer = SyntheticSealer(ledger)
    sealer.seal(2)
    w3 = chain.connect(settings)
    rpc = w3.provider.make_request
    with worker_thread(settings, resend_after=60.0) as seen:
        first = wait_until(lambda: checkpoint(settings, "anchored"), 30, "the first anchor")
        assert first.block_number is not None
        rpc("evm_setIntervalMining", [0])
        sealer.seal(2)
        with AnchorStore(settings.ledger_path) as store:
            stale = wait_until(lambda: store.open_txs(settings.anchor_contract), 30,
                               "the second transaction in flight")[0]
            first_nonce = next(t for t in store.txs(settings.anchor_contract)
                           if t.tx_hash == first.tx_hash).nonce
        assert stale.nonce == first_nonce + 1
        rpc("anvil_reorg", [w3.eth.block_number - first.block_number + 1, []])
        wait_until(lambda: any("abandoned" in e for p in seen for e in p.events), 30,
                   "the stranded transaction abandoned")
        rpc("evm_setIntervalMining", [1])
        wait_until(lambda: latest_anchored(settings) == 2, 30, "the latest checkpoint anchored")
        # Let the stale transaction be mined too if the node still has it: it must be a no-op.
        address = chain.anchor_account(settings).address
        wait_until(lambda: w3.eth.get_transaction_count(address, "pending")
                   == w3.eth.get_transaction_count(address, "latest"), 30, "the pool drained")
    with AnchorStore(settings.ledger_path) as store:
        statuses = {t.tx_hash: t.status for t in store.txs(settings.anchor_contract)}
        (record,) = store.reorgs(settings.anchor_contract)
        anchored = store.latest(settings.anchor_contract, "anchored")
        nonces = {t.tx_hash: t.nonce for t in store.txs(settings.anchor_contract)}
    assert statuses[stale.tx_hash] == "abandoned" and statuses[first.tx_hash] == "reorged"
    assert record.size == 1 and record.outcome == "gone"
    assert anchored is not None and anchored.size == 2
    assert nonces[anchored.tx_hash] == first_nonce, "the vanished nonce was not filled again"
    events = check_invariants(settings)
    assert [size for size, _, _ in events] == [2]
    ledger.close()


@pytest.mark.e2e
def test_rollback_leaves_no_block_at_the_anchor_height(isolated: Settings, fresh_stack,
                                                       tmp_path: Path) -> None:
    """``anvil_rollback``: the chain gets shorter than the anchor's block number (no block there
    at all, until new ones are mined): noticed, said by the verifier, anchored again."""
    anvil = fresh_stack(("anvil",)).settings
    settings, _ = reorg_settings(isolated, anvil, tmp_path)
    ledger = Ledger(settings.ledger_path)
    reading = seal(settings, SyntheticSealer(ledger, devices=2), 1)[0]
    rpc, w3 = settings.eth_rpc_url, chain.connect(settings)
    with worker_thread(settings):
        anchored = wait_until(lambda: checkpoint(settings, "anchored"), 30, "an anchor confirmed")
        assert anchored.block_number is not None
        with ProofService(settings) as service:
            old = service.proof(reading["device_id"], reading["seq"]).bundle
        w3.provider.make_request("evm_setIntervalMining", [0])  # type: ignore[arg-type]
        depth = w3.eth.block_number - anchored.block_number + 1
        answer = w3.provider.make_request("anvil_rollback", [depth])  # type: ignore[arg-type]
        assert "error" not in answer, answer
        assert w3.eth.block_number < anchored.block_number
        report = verify_bundle(old, JsonRpc(rpc))
        assert report.failed_step == "anchor-block", report.to_dict()
        detail = report.steps[-1].detail
        assert "does not exist" in detail and "fetch a fresh proof" in detail, detail
        wait_until(lambda: anchor_status(settings)["reorgs"], 30, "the rollback noticed")
        with AnchorStore(settings.ledger_path) as store:
            wait_until(lambda: store.open_txs(settings.anchor_contract), 30, "sent again")
        w3.provider.make_request("evm_setIntervalMining", [1])  # type: ignore[arg-type]
        # Fees stood still (no blocks), so the same transaction bytes were sent again: same
        # hash, new block.
        wait_until(lambda: (cp := checkpoint(settings, "anchored")) is not None
                   and cp.block_hash != anchored.block_hash, 30, "the checkpoint anchored again")
    (record,) = anchor_status(settings)["reorgs"]
    assert record["canonical_hash"] is None and record["outcome"] == "gone"
    with ProofService(settings) as service:
        fresh = service.proof(reading["device_id"], reading["seq"]).bundle
    assert fresh["anchor"]["block_hash"] != old["anchor"]["block_hash"]
    assert verify_bundle(fresh, JsonRpc(rpc)).status == "valid"
    assert verify_bundle(old, JsonRpc(rpc)).failed_step == "anchor-block"
    check_invariants(settings)
    ledger.close()
