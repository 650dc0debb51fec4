"""The anchoring worker's fee policy: the caps per gas and per hour, on anvil's base fee
settings (``anvil_setNextBlockBaseFeePerGas``), and the policy's arithmetic on its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.common_support import wait_until
from tests.test_anchor_worker import (
    ROOT,
    anchor_settings,
    chain_events,
    check_invariants,
    latest_anchored,
    worker_thread,
)
from vitalchain.anchor import chain
from vitalchain.anchor.feepolicy import GWEI, FeeCaps, decide
from vitalchain.anchor.synthetic import SyntheticSealer
from vitalchain.anchor.worker import status
from vitalchain.config import ConfigError, load_settings, to_environ
from vitalchain.storage.anchors import AnchorStore
from vitalchain.storage.ledger import Ledger

CAPS = FeeCaps(max_fee_per_gas=5 * GWEI, max_spend_per_hour=10**16)


def test_fees_under_the_cap_are_capped_not_doubled_past_it() -> None:
    decision = decide(base_fee=2 * GWEI, tip=GWEI, gas=60_000, caps=CAPS, spent_last_hour=0)
    assert decision.fees is not None and decision.reason is None
    assert decision.fees.max_fee == 5 * GWEI  # 2 x base + tip = 5 gwei: exactly the cap
    low = decide(base_fee=GWEI, tip=GWEI, gas=60_000, caps=CAPS, spent_last_hour=0)
    assert low.fees is not None and low.fees.max_fee == 3 * GWEI
    capped = decide(base_fee=3 * GWEI, tip=GWEI, gas=60_000, caps=CAPS, spent_last_hour=0)
    assert capped.fees is not None and capped.fees.max_fee == 5 * GWEI  # not 7


def test_base_fee_above_the_cap_waits_and_says_why() -> None:
    decision = decide(base_fee=4_500_000_000, tip=GWEI, gas=60_000, caps=CAPS, spent_last_hour=0)
    assert decision.fees is None
    assert "fees above cap" in decision.reason and "VITALCHAIN_ANCHOR_MAX_FEE_GWEI" in decision.reason


def test_replacement_that_would_pass_the_cap_waits() -> None:
    floor = chain.Fees(max_fee=4 * GWEI, priority_fee=GWEI)  # +25% = 5 gwei + 1 wei
    decision = decide(base_fee=GWEI, tip=GWEI, gas=60_000, caps=CAPS, spent_last_hour=0,
                      floor=floor)
    assert decision.fees is None and "replacing" in decision.reason


def test_spend_cap_counts_the_worst_case_of_the_next_transaction() -> None:
    worst = 60_000 * 3 * GWEI
    fits = decide(base_fee=GWEI, tip=GWEI, gas=60_000, caps=CAPS,
                  spent_last_hour=CAPS.max_spend_per_hour - worst)
    assert fits.fees is not None
    over = decide(base_fee=GWEI, tip=GWEI, gas=60_000, caps=CAPS,
                  spent_last_hour=CAPS.max_spend_per_hour - worst + 1)
    assert over.fees is None and "spend cap" in over.reason
    assert "VITALCHAIN_ANCHOR_MAX_SPEND_ETH_PER_HOUR" in over.reason


def test_fee_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="ANCHOR_MAX_FEE_GWEI"):
        load_settings({"VITALCHAIN_ANCHOR_MAX_FEE_GWEI": "0"})
    with pytest.raises(ConfigError, match="ANCHOR_MAX_SPEND_ETH_PER_HOUR"):
        load_settings({"VITALCHAIN_ANCHOR_MAX_SPEND_ETH_PER_HOUR": "-1"})
    with pytest.raises(ConfigError, match="ANCHOR_REORG_WATCH_BLOCKS"):
        load_settings({"VITALCHAIN_ANCHOR_REORG_WATCH_BLOCKS": "1",
                       "VITALCHAIN_ANCHOR_CONFIRMATIONS": "2"})


def _pending(settings) -> int:
    with AnchorStore(settings.ledger_path) as store:
        return len(store.checkpoints(settings.anchor_contract, "pending"))


@pytest.mark.e2e
def test_fee_spike_holds_the_backlog_then_one_transaction_anchors_it(fresh_stack,
                                                                      tmp_path: Path) -> None:
    settings = anchor_settings(fresh_stack(("anvil",)).settings, tmp_path,
                               anchor_every_windows=1, anchor_max_fee_gwei=5.0)
    w3 = chain.connect(settings)
    rpc = w3.provider.make_request
    ledger = Ledger(settings.ledger_path)
    sealer = SyntheticSealer(ledger)
    sealer.seal(2)
    with worker_thread(settings) as seen:
        wait_until(lambda: latest_anchored(settings) == 1, 30, "anchored before the spike")
        before = chain_events(settings)
        # The spike: blocks stop (so the base fee cannot decay by itself) at 50 gwei.
        rpc("evm_setIntervalMining", [0])
        rpc("anvil_setNextBlockBaseFeePerGas", [hex(50 * GWEI)])
        rpc("anvil_mine", [1])
        assert w3.eth.get_block("latest")["baseFeePerGas"] == 50 * GWEI
        for n in (1, 2, 3):
            sealer.seal(2)
            wait_until(lambda n=n: _pending(settings) == n, 30, f"checkpoint {n} held back")
        waiting = wait_until(lambda: status(settings)["waiting"], 30, "the worker to say it waits")
        assert "fees above cap" in waiting["reason"] and "50.000 gwei" in waiting["reason"]
        assert status(settings)["backlog_windows"] == 3
        assert any("WAITING (fees above cap" in p.line() for p in seen)
        assert any(e.startswith("waiting: fees above cap") for p in seen for e in p.events)
        with AnchorStore(settings.ledger_path) as store:
            assert not store.open_txs(settings.anchor_contract), "sent above the cap"
        assert chain_events(settings) == before
        # Fees fall: one transaction anchors the latest checkpoint, covering the backlog.
        rpc("anvil_setNextBlockBaseFeePerGas", [hex(GWEI)])
        rpc("anvil_mine", [1])
        rpc("evm_setIntervalMining", [1])
        wait_until(lambda: latest_anchored(settings) == 4, 30, "the backlog anchored")
    events = check_invariants(settings)
    assert events[: len(before)] == before
    assert [size for size, _, _ in events[len(before):]] == [4], "backlog should be one tx"
    with AnchorStore(settings.ledger_path) as store:
        superseded = store.checkpoints(settings.anchor_contract, "superseded")
        txs = store.txs(settings.anchor_contract)
    assert [(cp.size, cp.superseded_by) for cp in superseded] == [(2, 4), (3, 4)]
    assert all(t.max_fee <= 5 * GWEI for t in txs)
    assert status(settings)["waiting"] is None
    assert any("no longer waiting" in e for p in seen for e in p.events)
    ledger.close()


@pytest.mark.e2e
def test_spend_cap_per_hour_holds_the_backlog(fresh_stack, tmp_path: Path) -> None:
    settings = anchor_settings(fresh_stack(("anvil",)).settings, tmp_path,
                               anchor_every_windows=1)
    ledger = Ledger(settings.ledger_path)
    sealer = SyntheticSealer(ledger)
    sealer.seal(2)
    with worker_thread(settings):
        wait_until(lambda: latest_anchored(settings) == 1, 30, "the first anchor")
    with AnchorStore(settings.ledger_path) as store:
        spent = store.spent_since(settings.anchor_contract, 0)
        (mined,) = store.txs(settings.anchor_contract, "mined")
    receipt = chain.connect(settings).eth.get_transaction_receipt(mined.tx_hash)
    assert spent == receipt["gasUsed"] * receipt["effectiveGasPrice"] > 0
    # A cap that the first transaction fits in but a second one (at least as dear) cannot.
    tight = settings.with_overrides(anchor_max_spend_eth_per_hour=spent * 1.5 / 10**18)
    sealer.seal(2)
    with worker_thread(tight):
        waiting = wait_until(lambda: status(tight)["waiting"], 30, "the worker to say it waits")
        assert "spend cap" in waiting["reason"]
        assert _pending(tight) == 1 and latest_anchored(tight) == 1
    with worker_thread(settings):
        wait_until(lambda: latest_anchored(settings) == 2, 30, "anchored under a larger cap")
    check_invariants(settings)
    ledger.close()


@pytest.mark.e2e
def test_anchor_run_progress_line_says_it_waits(fresh_stack, tmp_path: Path) -> None:
    """The real ``vitalchain anchor run`` process: its progress line says WAITING and why, and
    ``vitalchain anchor status`` (another process) shows the wait and the backlog."""
    settings = anchor_settings(fresh_stack(("anvil",)).settings, tmp_path,
                               anchor_every_windows=1, anchor_max_fee_gwei=5.0)
    w3 = chain.connect(settings)
    rpc = w3.provider.make_request
    ledger = Ledger(settings.ledger_path)
    SyntheticSealer(ledger).seal(2)
    rpc("evm_setIntervalMining", [0])
    rpc("anvil_setNextBlockBaseFeePerGas", [hex(20 * GWEI)])
    rpc("anvil_mine", [1])
    env = {**os.environ, **to_environ(settings), "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "anchor-run.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "vitalchain", "anchor", "run", "--poll",
                                 "0.1"], env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: "WAITING (fees above cap" in out.read_text(), 30,
                       "the progress line to say it waits")
            shown = subprocess.run([sys.executable, "-m", "vitalchain", "anchor", "status"],
                                   env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert shown.returncode == 0, shown.stderr
            doc = json.loads(shown.stdout)
            assert "fees above cap" in doc["waiting"]["reason"]
            assert doc["backlog_windows"] == 1 and doc["checkpoints"] == {"pending": 1}
            rpc("anvil_setNextBlockBaseFeePerGas", [hex(GWEI)])
            rpc("anvil_mine", [1])
            rpc("evm_setIntervalMining", [1])
            wait_until(lambda: latest_anchored(settings) == 1, 30, "anchored once fees fell")
            wait_until(lambda: "no longer waiting" in out.read_text(), 10, "the all-clear")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0, out.read_text()
    line = next(ln for ln in out.read_text().splitlines() if "WAITING" in ln)
    assert "backlog 1 windows" in line and "VITALCHAIN_ANCHOR_MAX_FEE_GWEI" in line, line
    check_invariants(settings)
    ledger.close()
