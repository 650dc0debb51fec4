"""POST /audit/run: the tamper audit over HTTP, on a sealed and anchored state (tests/audit_support)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.api_support import served
from tests.audit_support import T0, build_world, influx_query
from vitalchain.config import Settings
from vitalchain.storage.apistore import ApiStore
from vitalchain.storage.influx import quote_string
from vitalchain.storage.readings import point_time_ns

pytestmark = pytest.mark.e2e


def test_audit_run_clean_then_tampered(isolated: Settings, tmp_path: Path) -> None:
    world = build_world(isolated.with_overrides(state_dir=tmp_path))
    store = ApiStore(tmp_path / "api.sqlite")
    tokens = {n: store.add_user(n, r) for n, r in (("audrey", "auditor"), ("root", "admin"),
                                                     ("alice", "clinician"))}
    store.close()
    body = {"from": str(T0), "to": str(world.end_us)}
    with served(world.settings, tmp_path / "api.sqlite") as base:
        def run(who: str, json: object) -> httpx.Response:
            return httpx.post(f"{base}/audit/run", json=json, timeout=60,
                              headers={"Authorization": f"Bearer {tokens[who]}"})

        r = run("audrey", body)
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["format"] == "vitalchain-audit/1" and report["ok"] is True, report
        assert report["counts"]["readings_checked"] == 36 and report["counts"]["chain_checked"]
        assert run("alice", body).status_code == 403
        for bad in ({"from": "yesterday", "to": "0"}, {"from": "10", "to": "5"},
                    {"from": "2026-01-01", "to": "2026-03-01"}, {"from": "0"},
                    {**body, "rpc": "http://evil"}):
            assert run("audrey", bad).status_code == 422, bad

        r = world.reading("dev-c", 7)
        influx_query(world.settings, f"DELETE FROM readings WHERE device_id = {quote_string('dev-c')} "
                                     f"AND time = {point_time_ns(r['ts_us'], r['seq'])}")
        report = run("root", body).json()
        assert report["ok"] is False
        assert [(f["kind"], f["reading_id"]) for f in report["readings"]] == [("deleted", "dev-c#7")]
