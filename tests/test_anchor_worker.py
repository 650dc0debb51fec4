"""The anchoring worker on a real anvil: cadence, crash-restart (SIGKILL), node outage.

Each test checks the same invariants against the chain itself (the contract's Anchored events),
not just against the worker's own records: no root emitted twice, every emitted root is the
ledger's root at that size, every recorded checkpoint anchored or superseded by a larger anchored
one, and in the end the whole log is covered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from web3 import Web3

from tests.common_support import wait_until
from vitalchain.anchor import chain
from vitalchain.anchor.deploy import deploy
from vitalchain.anchor.synthetic import SyntheticSealer
from vitalchain.anchor.worker import Progress, WorkerLockedError, run_worker
from vitalchain.config import Settings
from vitalchain.core.integrity import MerkleLog
from vitalchain.storage.anchors import AnchorStore
from vitalchain.storage.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]


def anchor_settings(base: Settings, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        state_dir=tmp_path, ledger_file=str(tmp_path / "ledger.sqlite"),
        anchor_every_windows=3, anchor_interval_seconds=0.5, anchor_confirmations=2)
    values.update(overrides)
    settings = base.with_overrides(**values)
    address = deploy(settings, record=False).address
    return settings.with_overrides(anchor_contract=address)


def chain_events(settings: Settings) -> list[tuple[int, str, str]]:
    """(size, root hex, tx hash) of every Anchored event of the contract, in chain order."""
    w3 = chain.connect(settings)
    logs = w3.eth.get_logs({"address": Web3.to_checksum_address(settings.anchor_contract),
                            "fromBlock": 0, "toBlock": "latest",
                            "topics": [chain.ANCHORED_TOPIC]})
    return [(int.from_bytes(bytes(lg["data"]), "big"), bytes(lg["topics"][1]).hex(),
             "0x" + bytes(lg["transactionHash"]).hex()) for lg in logs]


def check_invariants(settings: Settings) -> list[tuple[int, str, str]]:
    """Assert 'nothing anchored twice, nothing skipped'; returns the chain's events."""
    events = chain_events(settings)
    roots = [root for _, root, _ in events]
    assert len(roots) == len(set(roots)), f"a root was anchored twice: {events}"
    sizes = [size for size, _, _ in events]
    assert sizes == sorted(set(sizes)), f"sizes not strictly increasing: {sizes}"
    with Ledger(settings.ledger_path) as ledger:
        log = MerkleLog(ledger.leaf_hashes())
    for size, root, _ in events:
        assert log.root(size).hex() == root, f"anchored root at {size} is not the ledger's"
    with AnchorStore(settings.ledger_path) as store:
        cps = store.checkpoints(settings.anchor_contract)
        assert not store.open_txs(settings.anchor_contract)
    anchored = {cp.size: cp for cp in cps if cp.status == "anchored"}
    for cp in cps:
        assert cp.status in ("anchored", "superseded"), cp
        if cp.status == "superseded":
            assert cp.superseded_by in anchored and cp.superseded_by > cp.size, cp
    assert {(s, cp.root, cp.tx_hash) for s, cp in anchored.items()} == set(events)
    assert max(anchored) == log.size, "the end of the log was not anchored"
    return events


@contextmanager
def worker_thread(settings: Settings, **kwargs: object) -> Iterator[list[Progress]]:
    stop = threading.Event()
    seen: list[Progress] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_worker(settings, stop, seen.append, poll_interval=0.1, **kwargs)  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "worker did not stop"
    assert not errors, errors


def latest_anchored(settings: Settings) -> int:
    with AnchorStore(settings.ledger_path) as store:
        cp = store.latest(settings.anchor_contract, "anchored")
    return cp.size if cp else 0


def test_worker_anchors_the_log_as_it_grows(fresh_stack, tmp_path: Path) -> None:
    settings = anchor_settings(fresh_stack(("anvil",)).settings, tmp_path)
    ledger = Ledger(settings.ledger_path)
    sealer = SyntheticSealer(ledger)
    for _ in range(4):
        sealer.seal(3)
    with worker_thread(settings) as seen:
        wait_until(lambda: latest_anchored(settings) == 4, 30, "first checkpoint anchored")
        for _ in range(5):
            sealer.seal(2)
        wait_until(lambda: latest_anchored(settings) == 9, 30, "log end anchored")
        with pytest.raises(WorkerLockedError):
            run_worker(settings, threading.Event())
    assert all(p.error is None for p in seen), [p.error for p in seen if p.error]
    events = check_invariants(settings)
    assert events[0][0] == 4 and events[-1][0] == 9
    with AnchorStore(settings.ledger_path) as store:
        cp = store.latest(settings.anchor_contract, "anchored")
    assert cp is not None and cp.confirmations is not None and cp.confirmations >= 2
    assert cp.gas_used and 30_000 < cp.gas_used < 100_000
    ledger.close()


def _worker_process(settings: Settings) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update({
        "VITALCHAIN_STATE_DIR": str(settings.state_dir),
        "VITALCHAIN_LEDGER_FILE": settings.ledger_file,
        "VITALCHAIN_ETH_PORT": str(settings.eth_port),
        "VITALCHAIN_INFLUX_PORT": str(settings.influx_port),
        "VITALCHAIN_ETH_CHAIN_ID": str(settings.eth_chain_id),
        "VITALCHAIN_ETH_BLOCK_TIME": str(settings.eth_block_time),
        "VITALCHAIN_ANCHOR_CONTRACT": settings.anchor_contract,
        "VITALCHAIN_ANCHOR_EVERY_WINDOWS": str(settings.anchor_every_windows),
        "VITALCHAIN_ANCHOR_INTERVAL_SECONDS": str(settings.anchor_interval_seconds),
        "VITALCHAIN_ANCHOR_CONFIRMATIONS": str(settings.anchor_confirmations),
    })
    return subprocess.Popen([sys.executable, "-m", "vitalchain", "anchor", "run", "--poll",
                             "0.05", "--quiet"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.e2e
def test_sigkill_mid_flight_then_restart(fresh_stack, tmp_path: Path) -> None:
    settings = anchor_settings(fresh_stack(("anvil",)).settings, tmp_path)
    ledger = Ledger(settings.ledger_path)
    sealer = SyntheticSealer(ledger)
    store = AnchorStore(settings.ledger_path)
    kills_in_flight = 0
    for _round in range(3):
        sealer.seal(2)
        proc = _worker_process(settings)
        try:
            # Kill the moment a transaction is signed/sent but not yet confirmed.
            wait_until(lambda: store.open_txs(settings.anchor_contract)
                       or store.checkpoints(settings.anchor_contract, "mined"), 30,
                       "worker to have a transaction in flight")
            sealer.seal(4)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        kills_in_flight += 1
    assert kills_in_flight == 3
    proc = _worker_process(settings)
    try:
        wait_until(lambda: latest_anchored(settings) == ledger.log_size(), 60,
                   "restarted worker to anchor the whole log")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, proc.stderr.read() if proc.stderr else ""
    events = check_invariants(settings)
    assert len(events) >= 2
    store.close()
    ledger.close()


@pytest.mark.e2e
def test_node_outage_backlog_is_anchored_by_one_transaction(fresh_stack, tmp_path: Path) -> None:
    running = fresh_stack(("anvil",))
    settings = anchor_settings(running.settings, tmp_path)
    ledger = Ledger(settings.ledger_path)
    sealer = SyntheticSealer(ledger)
    store = AnchorStore(settings.ledger_path)
    sealer.seal(2)
    with worker_thread(settings, resend_after=3.0) as seen:
        wait_until(lambda: latest_anchored(settings) == 1, 30, "anchored before the outage")
        before = chain_events(settings)
        running.stop("anvil")
        seen_before = len(seen)
        for pending in (1, 2, 3):  # three checkpoints recorded while the node is down
            sealer.seal(2)
            wait_until(lambda n=pending: len(store.checkpoints(settings.anchor_contract,
                                                                 "pending")) == n, 30,
                       f"checkpoint {pending} to be recorded while the node is down")
        wait_until(lambda: any(p.error for p in seen[seen_before:]), 10,
                   "worker to notice the outage")
        running.start("anvil")
        running.wait_healthy("anvil")
        wait_until(lambda: latest_anchored(settings) == 4, 60, "backlog anchored")
    events = check_invariants(settings)
    assert events[: len(before)] == before, "anchors from before the outage were lost"
    after = events[len(before):]
    assert [size for size, _, _ in after] == [4], f"backlog should be one tx: {after}"
    superseded = store.checkpoints(settings.anchor_contract, "superseded")
    assert [cp.size for cp in superseded] == [2, 3]
    assert all(cp.superseded_by == 4 for cp in superseded)
    # The pre-outage anchor's receipt survives the node restart (anvil --state).
    w3 = chain.connect(settings)
    assert w3.eth.get_transaction_receipt(before[0][2])["status"] == 1
    store.close()
    ledger.close()


@pytest.mark.e2e
def test_dropped_and_stolen_nonce_are_sent_again(fresh_stack, tmp_path: Path) -> None:
    """A tx the node forgets is replaced on its nonce; a nonce taken by a foreign tx is not
    waited on forever: the checkpoint goes out again on a fresh nonce."""
    settings = anchor_settings(fresh_stack(("anvil",)).settings, tmp_path)
    w3 = chain.connect(settings)
    rpc = w3.provider.make_request
    ledger = Ledger(settings.ledger_path)
    store = AnchorStore(settings.ledger_path)
    SyntheticSealer(ledger).seal(2)
    rpc("evm_setIntervalMining", [0])  # nothing gets mined until we say so
    with worker_thread(settings, resend_after=60.0):
        first = wait_until(lambda: store.txs(settings.anchor_contract, "sent"), 30,
                           "a transaction sent")[0]
        rpc("anvil_dropTransaction", [first.tx_hash])
        second = wait_until(lambda: [t for t in store.txs(settings.anchor_contract, "sent")
                                     if t.tx_hash != first.tx_hash], 30,
                            "the forgotten transaction replaced")[0]
        assert second.nonce == first.nonce and second.max_fee > first.max_fee
        # Someone else (same key) takes the nonce: drop ours, mine a foreign transfer.
        rpc("anvil_dropTransaction", [second.tx_hash])
        account = chain.anchor_account(settings)
        foreign = account.sign_transaction({
            "to": account.address, "value": 0, "gas": 21000, "nonce": first.nonce,
            "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**10,
            "chainId": settings.eth_chain_id, "type": 2})
        w3.eth.send_raw_transaction(foreign.raw_transaction)
        rpc("evm_mine", [])
        rpc("evm_setIntervalMining", [1])
        wait_until(lambda: latest_anchored(settings) == 1, 30, "anchored on a fresh nonce")
    check_invariants(settings)
    txs = store.txs(settings.anchor_contract)
    statuses = {t.tx_hash: t.status for t in txs}
    assert statuses[first.tx_hash] == "dropped" and statuses[second.tx_hash] == "dropped"
    (mined,) = [t for t in txs if t.status == "mined"]
    assert mined.nonce == first.nonce + 1
    store.close()
    ledger.close()
