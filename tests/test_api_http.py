"""The HTTP API in-process (FastAPI TestClient) on the real InfluxDB and ledger.

Data is sealed exactly as the stream seals it (canonical readings with salts, ``readings`` points
from vitalchain/storage/readings.py, windows appended to the ledger), so proofs served here are real proofs.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle

from tests.common_support import wait_until, write_registry
from vitalchain.api.app import create_app
from vitalchain.app.commands.api import register
from vitalchain.config import Settings
from vitalchain.core.integrity import (
    build_window_header,
    canonical_reading,
    reading_leaf_hash,
    salt_key_id,
)
from vitalchain.core.timeutil import iso_from_us
from vitalchain.storage.apistore import ApiStore
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger, ReadingIndexRow
from vitalchain.storage.readings import reading_point, window_point

SALT_KEY = b"\x11" * 32
MINUTE_US = 60 * 1_000_000


def seal(settings: Settings, ledger: Ledger, raw: list[dict[str, Any]], first_offset: int,
         late: set[int] = frozenset()) -> dict[str, Any]:
    """Seal one window of readings (ledger + InfluxDB) as the stream does."""
    canon = [canonical_reading(r, SALT_KEY) for r in raw]
    leaves = [reading_leaf_hash(c) for c in canon]
    header = build_window_header(canon, partition=0, first_offset=first_offset,
                                 last_offset=first_offset + len(canon) - 1,
                                 salt_key_id=salt_key_id(SALT_KEY), late=len(late),
                                 leaf_hashes=leaves)
    rows = [ReadingIndexRow(c["device_id"], c["seq"], c["ts_us"], i, leaf)
            for i, (c, leaf) in enumerate(zip(canon, leaves, strict=True))]
    index = ledger.append_window(settings.raw_topic, 0, header, leaves, rows, idle_cut=False)
    points = [reading_point(c, leaf, header["window_id"], i in late, c["ts_us"] + 1000)
              for i, (c, leaf) in enumerate(zip(canon, leaves, strict=True))]
    points.append(window_point(header, index))

    async def write() -> None:
        async with InfluxClient(settings) as influx:
            await influx.write(points)

    asyncio.run(write())
    return header


def vitals_at(i: int) -> dict[str, Any]:
    return {"hr": 70 + i % 5, "spo2": 97, "rr": 16, "temp_c": 36.8, "sys": 120, "dia": 80}


def detail(r: Any) -> str:
    """The reason an error answer gives: ``detail``, or under /fhir the OperationOutcome's."""
    body = r.json()
    if body.get("resourceType") == "OperationOutcome":
        return body["issue"][0]["diagnostics"]
    return body["detail"]


@dataclass
class World:
    settings: Settings
    client: TestClient
    tokens: dict[str, str]
    now_us: int
    store_path: Path

    def get(self, who: str | None, url: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return self.client.get(url, headers=headers, **kwargs)

    def post(self, who: str | None, url: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return self.client.post(url, headers=headers, **kwargs)


def make_world(settings: Settings, tmp_path: Path, seal_seconds: float = 3600) -> Iterator[World]:
    now = time.time_ns() // 1000
    with Ledger(settings.ledger_path) as ledger:
        # patient pat-a: 30 readings, one a minute, the newest a minute ago; #3 arrived late.
        a = [{"device_id": "dev-a_1", "patient_id": "pat-a", "seq": i,
              "ts_us": now - (30 - i) * MINUTE_US, "vitals": vitals_at(i)} for i in range(30)]
        a[-1]["vitals"] = {"hr": 120, "spo2": 93, "rr": 22, "temp_c": 38.4, "sys": 105, "dia": 70}
        b = [{"device_id": "dev-b", "patient_id": "pat-b", "seq": i,
              "ts_us": now - (5 - i) * MINUTE_US, "vitals": vitals_at(i)} for i in range(5)]
        seal(settings, ledger, a[:20], 0, late={3})
        seal(settings, ledger, a[20:] + b, 20)
    write_registry(settings.state_dir, {"dev-a_1": "pat-a", "dev-b": "pat-b"})
    store_path = tmp_path / "api.sqlite"
    store = ApiStore(store_path)
    tokens = {name: store.add_user(name, role) for name, role in
              (("root", "admin"), ("alice", "clinician"), ("bob", "clinician"),
               ("audrey", "auditor"))}
    store.add_grant("pat-a", "alice", now + 3600 * 1_000_000, "root")
    store.close()
    app = create_app(settings, seal_seconds=seal_seconds, store_path=str(store_path))
    with TestClient(app) as client:
        yield World(settings, client, tokens, now, store_path)


@pytest.fixture
def world(isolated: Settings, tmp_path: Path) -> Iterator[World]:
    yield from make_world(isolated.with_overrides(state_dir=tmp_path), tmp_path)


# --- who may do what -------------------------------------------------------------------------
def test_unauthenticated_and_wrong_role_are_refused_with_reasons(world: World) -> None:
    r = world.get(None, "/clinician/patients")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert "Bearer" in r.json()["detail"]
    r = world.client.get("/clinician/patients", headers={"Authorization": "Bearer vct_x_y"})
    assert r.status_code == 401 and "invalid" in r.json()["detail"]
    r = world.client.get("/me", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    assert world.get("alice", "/me").json()["role"] == "clinician"

    refusals = [("alice", "/audit/windows", "auditor"), ("audrey", "/clinician/patients", "clinician"),
                ("root", "/fhir/Observation?patient=pat-a", "clinician"),
                ("alice", "/admin/users", "admin"), ("audrey", "/admin/grants", "admin")]
    for who, url, needed in refusals:
        r = world.get(who, url)
        assert r.status_code == 403, (who, url, r.text)
        assert f"requires role {needed}" in detail(r), r.text
    r = world.post("alice", "/admin/users", json={"name": "mallory", "role": "admin"})
    assert r.status_code == 403


def test_clinician_sees_only_granted_patients(world: World) -> None:
    r = world.get("alice", "/clinician/patients")
    assert r.status_code == 200, r.text
    patients = r.json()["patients"]
    assert [p["patient_id"] for p in patients] == ["pat-a"]
    latest = patients[0]["latest"]
    assert (latest["device_id"], latest["seq"]) == ("dev-a_1", 29)
    # hr 120 -> 2, spo2 93 -> 2, rr 22 -> 2, temp 38.4 -> 1, sys 105 -> 1
    assert patients[0]["news2"]["score"] == 8 and patients[0]["news2"]["risk"] == "high"
    assert world.get("bob", "/clinician/patients").json()["patients"] == []

    r = world.get("alice", "/clinician/patients/pat-b/vitals")
    assert r.status_code == 403 and "pat-b has not granted alice" in r.json()["detail"]
    r = world.get("alice", "/fhir/Observation", params={"patient": "pat-b"})
    assert r.status_code == 403
    assert world.get("alice", "/audit/proofs/dev-b/0").status_code == 403
    assert world.get("alice", "/audit/proofs/dev-a_1/0").status_code == 200
    assert world.get("audrey", "/audit/proofs/dev-b/0").status_code == 200
    assert world.get("audrey", "/audit/proofs/dev-b/99").status_code == 404


def test_vitals_are_downsampled_and_late_readings_flagged(world: World) -> None:
    start, end = iso_from_us(world.now_us - 40 * MINUTE_US), iso_from_us(world.now_us)
    r = world.get("alice", "/clinician/patients/pat-a/vitals",
                  params={"start": start, "end": end, "max_points": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["interval_s"] == 300  # 2400 s / 10 points -> 240 s -> next nice interval
    assert 0 < len(body["points"]) <= 10
    assert sum(p["n"] for p in body["points"]) == 30
    assert max(p["hr_max"] for p in body["points"]) == 120
    assert [(x["device_id"], x["seq"]) for x in body["late"]] == [("dev-a_1", 3)]
    full = world.get("alice", "/clinician/patients/pat-a/vitals",
                     params={"start": start, "end": end}).json()
    assert full["interval_s"] == 5 and sum(p["n"] for p in full["points"]) == 30


@pytest.mark.parametrize("query", [
    {"start": "yesterday"}, {"end": "2026-01-01T00:00:00Z' OR 1=1 --"}, {"max_points": 100000},
    {"max_points": 0}, {"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
])
def test_bad_parameters_are_refused(world: World, query: dict[str, Any]) -> None:
    r = world.get("alice", "/clinician/patients/pat-a/vitals", params=query)
    assert r.status_code == 422, r.text


def test_hostile_ids_never_reach_influxql(world: World) -> None:
    for bad in ("pat-a' OR '1'='1", 'pat-a" OR 1=1', "pat-a\\", "x" * 65, "-leading"):
        r = world.get("alice", "/fhir/Observation", params={"patient": bad})
        assert r.status_code == 400, (bad, r.text)
    assert world.get("alice", "/clinician/patients/pat-a%27%20OR%201=1/vitals").status_code == 422
    # FHIR answers a bad search with 400 and an OperationOutcome (eq is a valid prefix now, and
    # a _count above the maximum is capped, as R4 says, not refused).
    for bad in ({"code": "1234-5"}, {"code": "http://snomed.info/sct|8867-4"},
                {"date": "xx2026-01-01"}, {"date": "ge2026-99-01"}, {"_count": -1}):
        r = world.get("alice", "/fhir/Observation", params={"patient": "pat-a", **bad})
        assert r.status_code == 400 and detail(r), (bad, r.text)


# --- consent -----------------------------------------------------------------------------------
def test_grant_expiry_and_revocation_via_api(world: World) -> None:
    url = "/clinician/patients/pat-b/vitals"
    assert world.get("bob", url).status_code == 403
    until = iso_from_us(time.time_ns() // 1000 + 1_500_000)
    r = world.post("root", "/admin/grants", json={"patient_id": "pat-b", "clinician": "bob",
                                                  "until": until})
    assert r.status_code == 201, r.text
    assert world.get("bob", url).status_code == 200
    wait_until(lambda: world.get("bob", url).status_code == 403, 10, "the grant to expire")
    assert "expired at" in world.get("bob", url).json()["detail"]

    r = world.post("root", "/admin/grants", json={"patient_id": "pat-b", "clinician": "bob",
                                                  "until": "2999-01-01T00:00:00Z"})
    assert r.status_code == 201 and world.get("bob", url).status_code == 200
    r = world.post("root", "/admin/grants/revoke", json={"patient_id": "pat-b", "clinician": "bob"})
    assert r.status_code == 200 and r.json()["revoked"] == 1
    r = world.get("bob", url)
    assert r.status_code == 403 and "revoked at" in r.json()["detail"]
    assert world.post("root", "/admin/grants/revoke",
                      json={"patient_id": "pat-b", "clinician": "bob"}).status_code == 404
    bad = [{"patient_id": "pat-b", "clinician": "audrey", "until": "2999-01-01"},  # not clinician
           {"patient_id": "pat-b", "clinician": "bob", "until": "2001-01-01"},     # in the past
           {"patient_id": "pat b", "clinician": "bob", "until": "2999-01-01"},     # bad id
           {"patient_id": "pat-z", "clinician": "bob", "until": "2999-01-01"},     # unknown patient
           {"patient_id": "dev-b", "clinician": "bob", "until": "2999-01-01"}]     # a device, not a patient
    for body in bad:
        assert world.post("root", "/admin/grants", json=body).status_code == 422, body
    device = world.post("root", "/admin/grants", json=bad[-1]).json()["detail"]
    assert "is a device, not a patient" in device and "'pat-b'" in device
    grants = world.get("root", "/admin/grants", params={"clinician": "bob"}).json()["grants"]
    assert [g["active"] for g in grants] == [False, False]


def test_cli_users_and_grants(world: World) -> None:
    @click.group()
    def root() -> None: ...

    register(root)
    runner = CliRunner()
    settings = world.settings.with_overrides(state_dir=world.store_path.parent)
    # Grants name patients the device registry knows (the world's devices, as provisioning writes).
    registry = settings.state_dir / "devices" / "registry.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text('{"dev-a_1": "pat-a", "dev-b": "pat-b"}\n')
    r = runner.invoke(root, ["users", "add", "carol", "--role", "clinician"], obj=settings)
    assert r.exit_code == 0, r.output
    token = r.output.strip()
    world.tokens["carol"] = token
    assert world.get("carol", "/clinician/patients").json()["patients"] == []
    r = runner.invoke(root, ["users", "add", "carol", "--role", "auditor"], obj=settings)
    assert r.exit_code != 0 and "already exists" in r.output
    r = runner.invoke(root, ["grants", "add", "pat-a", "carol", "--until", "2999-01-01T00:00:00Z"],
                      obj=settings)
    assert r.exit_code == 0, r.output
    assert world.get("carol", "/clinician/patients/pat-a/vitals").status_code == 200
    r = runner.invoke(root, ["grants", "revoke", "pat-a", "carol"], obj=settings)
    assert r.exit_code == 0, r.output
    assert world.get("carol", "/clinician/patients/pat-a/vitals").status_code == 403
    r = runner.invoke(root, ["grants", "add", "pat-a", "carol", "--until", "tomorrow"], obj=settings)
    assert r.exit_code != 0 and "ISO 8601" in r.output
    entries = world.get("audrey", "/audit/access", params={"limit": 1000}).json()["entries"]
    cli = [e["path"] for e in entries if e["method"] == "CLI"]
    assert cli == ["users add carol --role clinician", "grants add pat-a carol",
                   "grants revoke pat-a carol"]


# --- the access log ----------------------------------------------------------------------------
def test_access_log_records_and_proves_every_request(world: World) -> None:
    world.get(None, "/clinician/patients")
    world.get("alice", "/clinician/patients/pat-b/vitals")
    world.get("alice", "/clinician/patients/pat-a/vitals")
    entries = world.get("audrey", "/audit/access").json()["entries"]
    summary = [(e["user"], e["path"], e["allowed"], e["status"]) for e in entries]
    assert summary[:3] == [(None, "/clinician/patients", False, 401),
                           ("alice", "/clinician/patients/pat-b/vitals", False, 403),
                           ("alice", "/clinician/patients/pat-a/vitals", True, 200)]
    assert "has not granted" in entries[1]["reason"] and entries[1]["patient_id"] == "pat-b"
    raw = world.store_path.read_bytes() + world.store_path.with_suffix(".sqlite-wal").read_bytes()
    for token in world.tokens.values():
        assert token.encode() not in raw and token.split("_", 2)[2].encode() not in raw

    r = world.get("audrey", "/audit/access/2/proof")
    assert r.status_code == 200, r.text
    proof = r.json()
    assert proof["entry"]["reason"] == entries[1]["reason"] and proof["anchor"] is None
    assert proof["window"]["format"] == "vitalchain-access-window/1"
    report = world.post("audrey", "/audit/access/verify", json=proof).json()
    # every hash holds, and the checkpoint is not anchored yet: pending (as for a reading bundle)
    assert report["status"] == "pending" and report["failed_step"] is None, report
    # the access window is in the same log as the reading windows
    windows = world.get("audrey", "/audit/windows").json()["windows"]
    assert [w["kind"] for w in windows] == ["readings", "readings", "access"]
    assert windows[2]["anchor"]["status"] == "unanchored"

    forged = json.loads(json.dumps(proof))
    forged["entry"]["allowed"] = True
    report = world.post("audrey", "/audit/access/verify", json=forged).json()
    assert report["status"] == "invalid" and report["failed_step"] == "entry-inclusion"

    # Someone with write access to api.sqlite rewrites history: the proof is refused.
    with sqlite3.connect(world.store_path) as db:
        entry = json.loads(db.execute("SELECT entry FROM api_access WHERE seq=2").fetchone()[0])
        entry.update(allowed=True, status=200, reason="grant active")
        db.execute("UPDATE api_access SET entry=?, allowed=1 WHERE seq=2", (json.dumps(entry),))
    r = world.get("audrey", "/audit/access/2/proof")
    assert r.status_code == 409 and "altered" in r.json()["detail"]
    assert world.get("audrey", "/audit/access/3/proof").status_code == 200
    assert world.get("audrey", "/audit/access/999999/proof").status_code == 404


# --- FHIR ----------------------------------------------------------------------------------------
def test_fhir_observations_are_valid_r4_vital_signs(world: World) -> None:
    params = {"patient": "pat-a", "_count": 15,  # Observations: 3 readings x 5
              "date": [f"ge{iso_from_us(world.now_us - 30 * MINUTE_US)}",
                       f"le{iso_from_us(world.now_us)}"]}
    r = world.get("alice", "/fhir/Observation", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    bundle = Bundle.model_validate(body)  # fhir.resources R4B: raises if invalid
    assert bundle.type == "searchset" and len(bundle.entry) == 15  # 3 readings x 5 observations
    by_code = {e["resource"]["code"]["coding"][0]["code"]: e["resource"] for e in body["entry"]}
    assert set(by_code) == {"8867-4", "9279-1", "8310-5", "2708-6", "85354-9"}
    assert [c["code"] for c in by_code["2708-6"]["code"]["coding"]] == ["2708-6", "59408-5"]
    units = {code: res["valueQuantity"]["code"] for code, res in by_code.items() if code != "85354-9"}
    assert units == {"8867-4": "/min", "9279-1": "/min", "8310-5": "Cel", "2708-6": "%"}
    bp = by_code["85354-9"]
    assert "valueQuantity" not in bp
    assert [(c["code"]["coding"][0]["code"], c["valueQuantity"]["code"]) for c in bp["component"]] \
        == [("8480-6", "mm[Hg]"), ("8462-4", "mm[Hg]")]
    for res in by_code.values():
        assert res["category"][0]["coding"][0]["code"] == "vital-signs"
        assert res["device"]["reference"] == "Device/dev-a_1"
        assert res["subject"]["reference"] == "Patient/pat-a"
    first = body["entry"][0]["resource"]
    assert first["identifier"][0]["value"] == "urn:vitalchain:dev-a_1:0:8867-4"
    again = world.get("alice", "/fhir/Observation", params=params).json()
    assert [e["resource"]["id"] for e in again["entry"]] == [e["resource"]["id"] for e in body["entry"]]
    late = [e["resource"] for e in body["entry"] if len(e["resource"]["extension"]) == 2]
    assert late == []  # seq 3 is the late one; _count=3 stops before it

    proof_url = first["extension"][0]["valueUrl"]
    assert proof_url.endswith("/audit/proofs/dev-a_1/0")
    bundle_json = world.get("audrey", proof_url).json()
    assert bundle_json["reading"]["vitals"]["hr"] == first["valueQuantity"]["value"]

    r = world.get("alice", "/fhir/Observation",
                  params={"patient": "pat-a", "code": "http://loinc.org|8480-6", "_count": 4})
    resources = [e["resource"] for e in Bundle.model_validate(r.json()).model_dump()["entry"]]
    assert {res["code"]["coding"][0]["code"] for res in resources} == {"85354-9"} and len(resources) == 4
    r = world.get("alice", "/fhir/Observation", params={"patient": "pat-a", "code": "2708-6,8867-4",
                                                        "date": "ge" + iso_from_us(world.now_us)})
    assert Bundle.model_validate(r.json()).total == 0


# --- proofs and verification -------------------------------------------------------------------
def test_uploaded_bundles_are_verified(world: World) -> None:
    bundle = world.get("audrey", "/audit/proofs/dev-a_1/25").json()
    report = world.post("audrey", "/audit/verify", json=bundle).json()
    assert report["status"] == "pending", report  # hashes hold, not anchored yet
    bundle["reading"]["vitals"]["hr"] += 1
    report = world.post("audrey", "/audit/verify", json=bundle).json()
    assert report["status"] == "invalid" and report["failed_step"] == "reading-inclusion"
    report = world.post("audrey", "/audit/verify", json={"format": "nope"}).json()
    assert report["status"] == "error"
    # A clinician may verify a bundle it holds (the dashboard shows the verdict): same answer.
    by_clinician = world.post("alice", "/audit/verify", json=bundle)
    assert by_clinician.status_code == 200 and by_clinician.json()["failed_step"] == "reading-inclusion"
    assert world.client.post("/audit/verify", json=bundle).status_code == 401
    r = world.client.post("/audit/verify", headers={"Authorization": f"Bearer {world.tokens['audrey']}",
                                                    "Content-Type": "application/json"},
                          content=b"[" * 2_000_000)
    assert r.status_code == 413


def test_hostile_bodies_are_refused_before_parsing(world: World) -> None:
    # FastAPI parses bodies before authentication: deep nesting must not reach the parser.
    for who in (None, "audrey"):
        headers = {"Authorization": f"Bearer {world.tokens[who]}"} if who else {}
        r = world.client.post("/admin/users", headers={**headers, "Content-Type": "application/json"},
                              content=b"[" * 100_000 + b"]" * 100_000)
        assert r.status_code == 400 and "nested" in r.json()["detail"]
    fine = world.post("audrey", "/audit/verify", json={"a": [[{"b": '"[[[[' * 1000}]]})
    assert fine.status_code == 200 and fine.json()["status"] == "error"
    assert world.get("alice", "/me").status_code == 200


def test_openapi_description_lists_the_routes(world: World) -> None:
    spec = world.client.get("/openapi.json").json()
    assert {"/clinician/patients", "/fhir/Observation", "/audit/proofs/{device_id}/{seq}",
            "/audit/access/{seq}/proof", "/admin/grants"} <= set(spec["paths"])


def test_access_entries_are_sealed_in_the_background(isolated: Settings, tmp_path: Path) -> None:
    for world in make_world(isolated.with_overrides(state_dir=tmp_path), tmp_path, seal_seconds=0.2):
        world.get("alice", "/clinician/patients")
        with Ledger(world.settings.ledger_path) as ledger:
            wait_until(lambda: ledger.last_sealed_offset("access-log", 0) == 1, 10,
                       "the sealer to put entry 1 into the ledger")
            assert ledger.reading_count() == 35  # access entries are not readings
        entries = world.get("audrey", "/audit/access").json()["entries"]
        assert entries[0]["window_id"] == "access-1"
