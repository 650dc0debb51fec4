"""Property-based run of schemathesis over every operation of the OpenAPI description.

The app runs under uvicorn on the real (isolated) stack with data in it, and each generated
request carries the bearer token of a role the operation admits, so the generated inputs reach the
handlers (and InfluxDB, the ledger, the proof service) instead of stopping at 401. Checked on
every response: no server error (5xx) and the body conforms to the declared response schema.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.api_support import GRANTED, seed, served
from vitalchain.config import Settings

MAX_EXAMPLES = 60
# The bearer token each operation is exercised with: a role it admits.
ROLE_BY_PREFIX = (("/admin/", "root"), ("/clinician/", "alice"), ("/fhir/", "alice"),
                  ("/audit/", "audrey"), ("/me", "alice"))


def who_for(path: str) -> str | None:
    return next((who for prefix, who in ROLE_BY_PREFIX if path.startswith(prefix)), None)


def strategy(operation: Any) -> Any:
    """Valid requests and (where the operation has inputs to break) invalid ones."""
    positive = operation.as_strategy(GenerationMode.POSITIVE)
    if not (operation.path_parameters or operation.query or operation.body):
        return positive
    return st.one_of(positive, operation.as_strategy(GenerationMode.NEGATIVE))


def fuzz(operation: Any, base: str, headers: dict[str, str], failures: list[str]) -> int:
    """Up to MAX_EXAMPLES requests to one operation; failures are appended, not raised."""
    examples = 0

    @given(case=strategy(operation), aim_granted=st.booleans())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any, aim_granted: bool) -> None:
        nonlocal examples
        examples += 1
        # Half the time point patient ids at the granted patient, so clinician routes get past
        # the consent check into their queries.
        if aim_granted and case.path_parameters and "patient_id" in case.path_parameters:
            case.path_parameters["patient_id"] = GRANTED
        if aim_granted and isinstance(case.query, dict) and "patient" in case.query:
            case.query["patient"] = GRANTED
        case.call_and_validate(base_url=base, headers=headers,
                               checks=[not_a_server_error, response_schema_conformance])

    try:
        run()
    except Exception as exc:
        failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:1500]}")
    return examples


@pytest.mark.e2e
def test_no_operation_answers_a_server_error(isolated: Settings, tmp_path: Path) -> None:
    settings_ = isolated.with_overrides(state_dir=tmp_path)
    world = seed(settings_, tmp_path / "api.sqlite")
    with served(settings_, world.store_path) as base:
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20, [op.label for op in operations]
        failures: list[str] = []
        examples = 0
        started = time.monotonic()
        for operation in operations:
            who = who_for(operation.path)
            headers = {"Authorization": f"Bearer {world.tokens[who]}"} if who else {}
            examples += fuzz(operation, base, headers, failures)
        elapsed = time.monotonic() - started
    print(f"schemathesis: {len(operations)} operations, {examples} examples, {elapsed:.1f}s")
    assert not failures, "\n\n".join(failures)


EDGE_TIMES = ("9999-12-31T23:59:59-14:00", "0001-01-01", "0001-01-01T00:00:00+14:00", "2262-04-12")


def test_out_of_range_times_are_refused_not_crashed(isolated: Settings, tmp_path: Path) -> None:
    """Found by probing what schemathesis cannot generate (its strings are not ISO 8601): times
    outside InfluxDB's int64 nanoseconds used to give 503 (InfluxDB 400) or 500 (year 10000)."""
    settings_ = isolated.with_overrides(state_dir=tmp_path)
    world = seed(settings_, tmp_path / "api.sqlite")
    with served(settings_, world.store_path) as base:
        def auth(who: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {world.tokens[who]}"}

        for when in EDGE_TIMES:
            for who, path, params in (
                ("alice", "/fhir/Observation", {"patient": GRANTED, "date": f"ge{when}"}),
                ("alice", f"/clinician/patients/{GRANTED}/vitals", {"end": when}),
                ("alice", f"/clinician/patients/{GRANTED}/rejected", {"start": when}),
                ("audrey", "/audit/rejected", {"end": when}),
            ):
                r = httpx.get(base + path, params=params, headers=auth(who))
                if path.startswith("/fhir/"):  # FHIR: 400 with an OperationOutcome
                    assert r.status_code == 400, (path, when, r.text)
                    assert "outside" in r.json()["issue"][0]["diagnostics"], (path, when, r.text)
                else:
                    assert r.status_code == 422 and "outside" in r.json()["detail"], (path, when, r.text)
            if when != "2262-04-12":  # grant expiries may lie past InfluxDB's range
                r = httpx.post(f"{base}/admin/grants", headers=auth("root"),
                               json={"patient_id": GRANTED, "clinician": "bob", "until": when})
                assert r.status_code == 422, r.text
        # 1970-01-01 is a real bound, not "no bound": the range is empty, not the last 24 h.
        r = httpx.get(f"{base}/clinician/patients/{GRANTED}/vitals", headers=auth("alice"),
                      params={"start": "1970-01-01", "end": "1970-01-01"})
        assert r.status_code == 200 and r.json()["points"] == [], r.text
