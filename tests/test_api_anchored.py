"""End to end on a real chain: the API's proofs (readings and access log) anchored on anvil."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.common_support import wait_until
from tests.test_api_http import make_world
from vitalchain.anchor.deploy import deploy
from vitalchain.anchor.worker import AnchorWorker
from vitalchain.config import Settings
from vitalchain.storage.anchors import AnchorStore


def anchor_all(settings: Settings) -> int:
    """Run the anchor worker until the whole current log is anchored; returns its size."""
    worker = AnchorWorker(settings)
    try:
        size = worker.ledger.log_size()

        def done() -> bool:
            worker.tick()
            with AnchorStore(settings.ledger_path) as store:
                cp = store.latest(settings.anchor_contract, "anchored")
            return cp is not None and cp.size == size

        wait_until(done, 60, f"checkpoint {size} to be anchored", interval=0.2)
        return size
    finally:
        worker.close()


@pytest.mark.e2e
def test_access_and_reading_proofs_against_anchored_checkpoints(isolated: Settings, fresh_stack,
                                                                tmp_path: Path) -> None:
    anvil = fresh_stack(("anvil",)).settings
    base = isolated.with_overrides(state_dir=tmp_path, eth_port=anvil.eth_port,
                                   anchor_every_windows=1, anchor_interval_seconds=0.0,
                                   anchor_confirmations=1)
    settings = base.with_overrides(anchor_contract=deploy(base, record=False).address)
    world_iter = make_world(settings, tmp_path)  # seals two reading windows
    world = next(world_iter)
    try:
        assert anchor_all(settings) == 2
        assert world.get("alice", "/clinician/patients/pat-b/vitals").status_code == 403
        assert world.post("audrey", "/audit/access/seal").json()["sealed_windows"] == ["access-1"]
        size = anchor_all(settings)
        assert size == 3

        bundle = world.get("audrey", "/audit/proofs/dev-a_1/7").json()
        assert bundle["anchor"] is not None and bundle["checkpoint"]["size"] == 3
        report = world.post("audrey", "/audit/verify", params={"rpc": "true"}, json=bundle).json()
        assert report["status"] == "valid" and report["anchor_checked"], report

        proof = world.get("audrey", "/audit/access/1/proof").json()
        assert proof["entry"]["allowed"] is False and proof["entry"]["user"] == "alice"
        assert proof["anchor"]["tx_hash"].startswith("0x") and proof["checkpoint"]["size"] == 3
        assert world.post("audrey", "/audit/access/verify", json=proof).json()["status"] == "valid"

        cps = world.get("audrey", "/audit/checkpoints").json()["checkpoints"]
        assert [(c["size"], c["status"]) for c in cps if c["status"] == "anchored"][-2:] == \
            [(2, "anchored"), (3, "anchored")]
        windows = world.get("audrey", "/audit/windows").json()["windows"]
        assert [w["anchor"]["status"] for w in windows] == ["anchored"] * 3
        assert [w["kind"] for w in windows] == ["readings", "readings", "access"]
        doc = world.get("audrey", "/audit/consistency", params={"old": 2, "new": 3}).json()
        assert doc["format"] == "vitalchain-consistency/1" and doc["old"]["size"] == 2
        assert world.get("audrey", "/audit/consistency", params={"old": 3, "new": 2}).status_code == 422
        assert world.get("audrey", "/audit/consistency", params={"old": 1, "new": 3}).status_code == 404
    finally:
        next(world_iter, None)

