"""The API marks a proof whose checkpoint is mined but not yet confirmed: header
``X-Vitalchain-Proof-Status: pending-confirmation``, no anchor in the bundle, and the window
list says ``pending-confirmation`` with its confirmation count (real anvil, worker stepped by
hand so the unconfirmed state holds still while the API is asked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.common_support import wait_until
from tests.test_api_http import make_world
from vitalchain.anchor.deploy import deploy
from vitalchain.anchor.worker import AnchorWorker
from vitalchain.config import Settings
from vitalchain.storage.anchors import AnchorStore


def _status(settings: Settings, status: str) -> bool:
    with AnchorStore(settings.ledger_path) as store:
        return bool(store.checkpoints(settings.anchor_contract, status))


@pytest.mark.e2e
def test_unconfirmed_anchor_is_served_as_pending_confirmation(isolated: Settings, fresh_stack,
                                                              tmp_path: Path) -> None:
    anvil = fresh_stack(("anvil",)).settings
    base = isolated.with_overrides(state_dir=tmp_path, eth_port=anvil.eth_port,
                                   anchor_every_windows=1, anchor_interval_seconds=0.0,
                                   anchor_confirmations=3)
    settings = base.with_overrides(anchor_contract=deploy(base, record=False).address)
    world_iter = make_world(settings, tmp_path)  # seals two reading windows
    world = next(world_iter)
    worker = AnchorWorker(settings)
    try:
        wait_until(lambda: worker.tick() and _status(settings, "mined"), 30, "an anchor mined",
                   interval=0.2)
        r = world.get("audrey", "/audit/proofs/dev-a_1/7")
        assert r.status_code == 200
        assert r.headers["x-vitalchain-proof-status"] == "pending-confirmation"
        done, required = r.headers["x-vitalchain-confirmations"].split("/")
        assert required == "3" and 1 <= int(done) < 3
        assert r.json()["anchor"] is None
        report = world.post("audrey", "/audit/verify", json=r.json()).json()
        assert report["status"] == "pending"
        windows = world.get("audrey", "/audit/windows").json()["windows"]
        assert {w["anchor"]["status"] for w in windows} == {"pending-confirmation"}
        assert all(w["anchor"]["confirmations_required"] == 3 for w in windows)

        wait_until(lambda: worker.tick() and _status(settings, "anchored")
                   and not _status(settings, "mined"), 30, "the anchor confirmed", interval=0.2)
        r = world.get("audrey", "/audit/proofs/dev-a_1/7")
        assert r.headers["x-vitalchain-proof-status"] == "anchored"
        assert r.json()["anchor"] is not None
        windows = world.get("audrey", "/audit/windows").json()["windows"]
        assert {w["anchor"]["status"] for w in windows} == {"anchored"}
    finally:
        worker.close()
        next(world_iter, None)
