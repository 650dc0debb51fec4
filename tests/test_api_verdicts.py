"""Honest verdicts over HTTP: the server checks the anchor it has at hand and says what it checked;
consent is decided before anything is looked up. Real uvicorn, InfluxDB, ledger and anvil."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.api_support import served
from tests.audit_support import T0, build_world
from tests.common_support import write_registry
from vitalchain.config import Settings
from vitalchain.storage.apistore import ApiStore

pytestmark = pytest.mark.e2e


def test_verdicts_name_what_was_checked(isolated: Settings, tmp_path: Path) -> None:
    world = build_world(isolated.with_overrides(state_dir=tmp_path))  # anchored on anvil
    store = ApiStore(tmp_path / "api.sqlite")
    token = store.add_user("audrey", "auditor")
    store.close()
    auth = {"Authorization": f"Bearer {token}"}
    with served(world.settings, tmp_path / "api.sqlite") as base:
        bundle = httpx.get(f"{base}/audit/proofs/dev-a/1", headers=auth, timeout=30).json()
        block = bundle["anchor"]["block_number"]

        # by default the server checks the anchor against its node, and says so with the block
        report = httpx.post(f"{base}/audit/verify", json=bundle, headers=auth, timeout=30).json()
        assert report["status"] == "valid" and report["anchor_checked"], report
        assert report["anchor_block"] == block
        assert report["summary"] == f"hashes valid, anchor verified on chain (block {block})"

        # hashes only: the verdict says the anchor was not checked, never "anchored"/"verified"
        offline = httpx.post(f"{base}/audit/verify", params={"rpc": "false"}, json=bundle,
                             headers=auth, timeout=30).json()
        assert offline["status"] == "valid" and not offline["anchor_checked"]
        assert offline["summary"] == "hashes valid, anchor not checked"
        assert "anchored" not in offline["summary"] and "verified" not in offline["summary"]

        # an anchor the chain does not back: hashes valid, the anchor check failed, and where
        forged = {**bundle, "anchor": {**bundle["anchor"], "block_number": block + 1000}}
        bad = httpx.post(f"{base}/audit/verify", json=forged, headers=auth, timeout=30).json()
        assert bad["status"] == "invalid" and bad["failed_step"] == "anchor-receipt", bad
        assert bad["summary"].startswith("hashes valid, anchor check FAILED at step anchor-receipt")

        # the audit over HTTP names what it checked too
        audit = httpx.post(f"{base}/audit/run", json={"from": str(T0), "to": str(world.end_us)},
                           headers=auth, timeout=60).json()
        assert audit["verdict"] == "clean" and audit["exit_code"] == 0, audit
        assert audit["summary"].startswith("OK: 4 windows and 36 readings sealed before the horizon")
        assert "2 checkpoints checked on chain" in audit["summary"]
        empty = httpx.post(f"{base}/audit/run", json={"from": str(T0 - 86_400_000_000),
                                                      "to": str(T0 - 1)}, headers=auth, timeout=60)
        assert empty.status_code == 200, empty.text
        assert empty.json()["verdict"] == "nothing_sealed" and empty.json()["ok"] is False
        assert empty.json()["summary"].startswith("NOTHING SEALED in this range")


def test_consent_is_checked_before_any_lookup(isolated: Settings, tmp_path: Path) -> None:
    """An ungranted clinician gets the same answer whether the reading or device exists."""
    world = build_world(isolated.with_overrides(state_dir=tmp_path))
    write_registry(tmp_path, {"dev-a": "pat-dev-a", "dev-b": "pat-dev-b"})
    store = ApiStore(tmp_path / "api.sqlite")
    tokens = {n: store.add_user(n, r) for n, r in (("alice", "clinician"), ("bob", "clinician"),
                                                     ("audrey", "auditor"))}
    store.add_grant("pat-dev-a", "alice", T0 * 2, "root")
    store.close()

    with served(world.settings, tmp_path / "api.sqlite") as base:
        def get(who: str, device: str, seq: int) -> httpx.Response:
            return httpx.get(f"{base}/audit/proofs/{device}/{seq}", timeout=30,
                             headers={"Authorization": f"Bearer {tokens[who]}"})

        exists, missing = get("bob", "dev-b", 1), get("bob", "dev-b", 999_999)
        assert exists.status_code == missing.status_code == 403, (exists.text, missing.text)
        assert exists.json() == missing.json()
        unknown = get("bob", "dev-nobody", 1)
        assert unknown.status_code == 403
        assert unknown.json()["detail"].replace("dev-nobody", "D") == \
            exists.json()["detail"].replace("dev-b", "D")
        # alice is granted pat-dev-a, not pat-dev-b: the same refusal for dev-b's readings
        assert get("alice", "dev-b", 1).json()["detail"] == get("alice", "dev-b", 999_999).json()["detail"]
        # callers allowed to see the device do learn whether the reading exists
        assert get("alice", "dev-a", 1).status_code == 200
        assert get("alice", "dev-a", 999_999).status_code == 404
        assert get("audrey", "dev-b", 999_999).status_code == 404
        assert get("audrey", "dev-b", 1).status_code == 200
        # the access log keeps the precise reason for auditors
        entries = httpx.get(f"{base}/audit/access", params={"user": "bob"}, timeout=30,
                            headers={"Authorization": f"Bearer {tokens['audrey']}"}).json()["entries"]
        reasons = [e["reason"] for e in entries]
        assert any("has not granted bob" in r for r in reasons), reasons
        assert any("not in the device registry" in r for r in reasons), reasons
