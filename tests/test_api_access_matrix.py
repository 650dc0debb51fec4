"""Every route × every caller: no token, each role, a clinician with and without a grant, a
disabled user. Routes are enumerated from the app, so a new route without a matrix entry fails.
Also: no parameter lets a clinician name a patient outside their grants; tokens are never logged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from tests.api_support import seed, served
from tests.common_support import wait_until
from vitalchain.app.stack.ports import free_port
from vitalchain.config import Settings, to_environ

NONE: frozenset[str] = frozenset()
CLIN, AUD, ADM = frozenset({"clinician"}), frozenset({"auditor"}), frozenset({"admin"})
PROVER, AUD_ADM, ANY = CLIN | AUD, AUD | ADM, CLIN | AUD | ADM
PUBLIC_PREFIXES = ("/static",)  # the dashboard's files (no data in them)
PUBLIC = {"/health", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
          "/fhir/metadata"}  # the CapabilityStatement (recorded in the access log all the same)
# (method path) -> (roles admitted, request, patient-scoped: a clinician needs a grant)
MATRIX: dict[str, tuple[frozenset[str], dict[str, Any], bool]] = {
    "GET /me": (ANY, {"url": "/me"}, False),
    "GET /clinician/patients": (CLIN, {"url": "/clinician/patients"}, False),
    "GET /clinician/patients/{patient_id}/vitals": (CLIN, {"url": "/clinician/patients/pat-a/vitals"}, True),
    "GET /clinician/patients/{patient_id}/rejected": (CLIN, {"url": "/clinician/patients/pat-a/rejected"},
                                                      True),
    "GET /fhir/Observation": (CLIN, {"url": "/fhir/Observation", "params": {"patient": "pat-a"}}, True),
    # Read by id is looked up among the caller's granted patients only: bob gets 404, not 403
    # (an ungranted patient's Observation and a missing one look alike; test_fhir_search_http).
    "GET /fhir/Observation/{resource_id}": (CLIN, {"url": "/fhir/Observation/1-0123456789abcdef-8867-4"},
                                            False),
    "GET /audit/proofs/{device_id}/{seq}": (PROVER, {"url": "/audit/proofs/dev-a_1/0"}, True),
    "POST /audit/verify": (PROVER, {"url": "/audit/verify", "json": {"format": "x"}}, False),
    "GET /audit/windows": (AUD, {"url": "/audit/windows"}, False),
    "GET /audit/checkpoints": (AUD, {"url": "/audit/checkpoints"}, False),
    "GET /audit/consistency": (AUD, {"url": "/audit/consistency", "params": {"old": 1, "new": 1}}, False),
    "GET /audit/access": (AUD, {"url": "/audit/access"}, False),
    "POST /audit/access/seal": (AUD_ADM, {"url": "/audit/access/seal"}, False),
    "GET /audit/access/{seq}/proof": (AUD, {"url": "/audit/access/1/proof"}, False),
    "POST /audit/access/verify": (AUD, {"url": "/audit/access/verify", "json": {}}, False),
    "GET /audit/rejected": (AUD, {"url": "/audit/rejected"}, False),
    "POST /audit/run": (AUD_ADM, {"url": "/audit/run", "json": {"from": "0", "to": "1000"}}, False),
    "GET /admin/users": (ADM, {"url": "/admin/users"}, False),
    "POST /admin/users": (ADM, {"url": "/admin/users", "json": {"name": "x", "role": "auditor"}}, False),
    "GET /admin/grants": (ADM, {"url": "/admin/grants"}, False),
    "POST /admin/grants": (ADM, {"url": "/admin/grants", "json": {"patient_id": "pat-z", "clinician": "bob",
                                                                  "until": "2999-01-01"}}, False),
    "POST /admin/grants/revoke": (ADM, {"url": "/admin/grants/revoke",
                                        "json": {"patient_id": "pat-q", "clinician": "bob"}}, False),
}
CALLERS = {"alice": "clinician", "bob": "clinician", "audrey": "auditor", "root": "admin"}


def app_routes(app: Any) -> set[str]:
    out = set()
    for route in app.routes:
        if isinstance(route, APIRoute):
            out |= {f"{m} {route.path}" for m in route.methods if m != "HEAD"}
    return out


@pytest.fixture
def world(isolated: Settings, tmp_path: Path) -> Any:
    settings = isolated.with_overrides(state_dir=tmp_path)
    world = seed(settings, tmp_path / "api.sqlite")
    with served(settings, world.store_path) as base:
        world.base = base
        yield world


def call(world: Any, who: str | None, method: str, request: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {world.tokens[who]}"} if who else {}
    req = dict(request)
    return httpx.request(method, world.base + req.pop("url"), headers=headers, timeout=30, **req)


def test_every_route_for_every_caller(world: Any) -> None:
    from vitalchain.api.app import create_app

    app = create_app(world.settings, store_path=str(world.store_path))
    try:
        routes = app_routes(app)
    finally:
        app.state.ctx.close()
    unlisted = {r for r in routes - set(MATRIX)
                if r.split(" ", 1)[1] not in PUBLIC and not r.split(" ", 1)[1].startswith(PUBLIC_PREFIXES)}
    assert not unlisted, f"routes without an access-matrix entry: {sorted(unlisted)}"
    assert set(MATRIX) <= routes, sorted(set(MATRIX) - routes)
    for key, (roles, request, scoped) in MATRIX.items():
        method = key.split(" ", 1)[0]
        for who in (None, "dave"):
            r = call(world, who, method, request)
            assert r.status_code == 401, (key, who, r.status_code, r.text)
        for who, role in CALLERS.items():
            r = call(world, who, method, request)
            allowed = role in roles and not (scoped and who == "bob")
            if allowed:
                assert r.status_code not in (401, 403) and r.status_code < 500, (key, who, r.text)
            else:
                assert r.status_code == 403, (key, who, r.status_code, r.text)


def test_no_parameter_names_a_patient_outside_the_grants(world: Any) -> None:
    refused = [
        {"url": "/clinician/patients/pat-b/vitals"},
        {"url": "/clinician/patients/pat-b/rejected"},
        {"url": "/fhir/Observation", "params": {"patient": "pat-b"}},
        {"url": "/fhir/Observation", "params": [("patient", "pat-b"), ("patient", "pat-a")]},
        {"url": "/fhir/Observation", "params": [("patient", "pat-a"), ("patient", "pat-b")]},
        # subject and Patient/ references are FHIR search parameters now: consent covers them
        {"url": "/fhir/Observation", "params": {"patient": "pat-a", "subject": "Patient/pat-b"}},
        {"url": "/fhir/Observation", "params": {"patient": "pat-a", "subject": "pat-b"}},
        {"url": "/fhir/Observation", "params": {"patient": "pat-a", "patient:Patient": "pat-b"}},
        {"url": "/fhir/Observation", "params": {"subject": "Patient/pat-b"}},
        {"url": "/fhir/Observation", "params": {"patient": "Patient/pat-b,pat-a"}},
        {"url": "/audit/proofs/dev-b/0"},
        {"url": "/audit/access", "params": {"patient": "pat-b"}},
        {"url": "/audit/rejected", "params": {"device": "dev-b"}},
        {"url": "/admin/grants", "params": {"patient": "pat-b"}},
    ]
    for request in refused:
        r = call(world, "alice", "GET", request)
        assert r.status_code in (403, 422), (request, r.status_code, r.text)
    # FHIR parameters the API does not implement are ignored and select nothing extra.
    for extra in ({"identifier": "pat-b"}, {"performer": "Patient/pat-b"}, {"focus": "pat-b"}):
        r = call(world, "alice", "GET", {"url": "/fhir/Observation", "params": {"patient": "pat-a", **extra}})
        assert r.status_code == 200, r.text
        subjects = {e["resource"]["subject"]["reference"] for e in r.json()["entry"]
                    if e["resource"]["resourceType"] == "Observation"}
        assert subjects == {"Patient/pat-a"}, subjects
    r = call(world, "alice", "GET", {"url": "/clinician/patients"})
    assert [p["patient_id"] for p in r.json()["patients"]] == ["pat-a"]


@pytest.mark.e2e
def test_tokens_are_never_logged(isolated: Settings, tmp_path: Path) -> None:
    settings = isolated.with_overrides(state_dir=tmp_path)
    world = seed(settings, tmp_path / "api.sqlite")
    port = free_port()
    log = tmp_path / "api.log"
    env = {**os.environ, **to_environ(settings), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vitalchain", "api", "--host", "127.0.0.1",
                                 "--port", str(port), "--seal-seconds", "0.5"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 30, "vitalchain api to answer")
        for who, url in (("alice", "/clinician/patients/pat-a/vitals"), ("bob", "/fhir/Observation?patient=pat-a"),
                         ("audrey", "/audit/windows"), ("root", "/admin/users"), ("dave", "/me")):
            httpx.get(base + url, headers={"Authorization": f"Bearer {world.tokens[who]}"})
        httpx.get(f"{base}/me", headers={"Authorization": "Bearer vct_abc_notarealsecretvalue123"})
        wait_until(lambda: b"/admin/users" in log.read_bytes(), 10, "uvicorn's access log line")
        wait_until(lambda: b"access-" in (tmp_path / "ledger.sqlite").read_bytes()
                   or (tmp_path / "ledger.sqlite-wal").exists(), 10, "the access log to be sealed")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    text = log.read_bytes()
    assert b"GET /audit/windows" in text  # access logging is on
    files = [log, *tmp_path.glob("api.sqlite*"), *tmp_path.glob("ledger.sqlite*")]
    for token in [*world.tokens.values(), "vct_abc_notarealsecretvalue123"]:
        secret = token.split("_", 2)[2].encode()
        for path in files:
            data = path.read_bytes()
            assert token.encode() not in data and secret not in data, (path, "holds a token")
