"""FHIR search parsing without services: date ranges, parameters, ids, the CapabilityStatement.

The expected ranges are written out by hand from the R4 rules (a value is the range its
precision implies; see docs/API.md), not computed with the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import given
from hypothesis import strategies as st

from vitalchain.api import fhir, fhirsearch
from vitalchain.api.fhirdates import UNIVERSE, DateValueError, prefixed, value_range
from vitalchain.api.fhirsearch import SearchError, parse_search
from vitalchain.core.timeutil import MAX_TIME_US

BASE = "http://127.0.0.1:8700/fhir"
END = UNIVERSE[0][1]


def us(*parts: int, tz: UTC = UTC) -> int:
    moment = datetime(*parts, tzinfo=tz)  # type: ignore[misc]
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


@pytest.mark.parametrize(("text", "lo", "hi"), [
    ("2026", us(2026, 1, 1), us(2027, 1, 1)),
    ("2026-11", us(2026, 11, 1), us(2026, 12, 1)),
    ("2026-12", us(2026, 12, 1), us(2027, 1, 1)),
    ("2024-02", us(2024, 2, 1), us(2024, 3, 1)),
    ("2026-11-30", us(2026, 11, 30), us(2026, 12, 1)),
    ("2026-11-30T07:00Z", us(2026, 11, 30, 7), us(2026, 11, 30, 7, 1)),
    ("2026-11-30T07:00", us(2026, 11, 30, 7), us(2026, 11, 30, 7, 1)),  # no offset: UTC
    ("2026-11-30T07:00:00Z", us(2026, 11, 30, 7), us(2026, 11, 30, 7, 0, 1)),
    ("2026-11-30T07:00:00.5Z", us(2026, 11, 30, 7, 0, 0, 500_000), us(2026, 11, 30, 7, 0, 0, 600_000)),
    ("2026-11-30T07:00:00.123456Z", us(2026, 11, 30, 7, 0, 0, 123_456), us(2026, 11, 30, 7, 0, 0, 123_457)),
    ("2026-11-30T07:00:00+01:00", us(2026, 11, 30, 6), us(2026, 11, 30, 6, 0, 1)),
    ("2026-11-30T07:00:00 01:00", us(2026, 11, 30, 6), us(2026, 11, 30, 6, 0, 1)),  # '+' unescaped
    ("2026-11-30T07:00-05:30", us(2026, 11, 30, 12, 30), us(2026, 11, 30, 12, 31)),
    ("1970-01-01", 0, 86_400_000_000),
])
def test_a_date_is_the_range_its_precision_implies(text: str, lo: int, hi: int) -> None:
    assert value_range(text) == (lo, hi)


DAY = (us(2026, 11, 30), us(2026, 12, 1))


@pytest.mark.parametrize(("value", "spans"), [
    ("2026-11-30", (DAY,)),
    ("eq2026-11-30", (DAY,)),
    ("ne2026-11-30", ((0, DAY[0]), (DAY[1], END))),
    ("lt2026-11-30", ((0, DAY[0]),)),
    ("eb2026-11-30", ((0, DAY[0]),)),
    ("le2026-11-30", ((0, DAY[1]),)),     # the whole day is <= the day
    ("gt2026-11-30", ((DAY[1], END),)),   # after the day, not after its first instant
    ("sa2026-11-30", ((DAY[1], END),)),
    ("ge2026-11-30", ((DAY[0], END),)),
])
def test_every_prefix(value: str, spans: tuple[tuple[int, int], ...]) -> None:
    assert prefixed(value) == spans


@pytest.mark.parametrize("text", ["26-11-30T07:00:00Z", "2026-13", "2026-02-30", "2026-11-30T07",
                                  "2026-11-30T25:00Z", "2026-11-30T07:00:00.1234567Z",
                                  "2026-11-30T07:00+15:00", "0001-01-01", "2262-04-12", "9999",
                                  "xx2026", "ap2026-11-30", "", "2026-11-30T07:00:00ZZ"])
def test_bad_dates_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(DateValueError) as err:
        prefixed(text)
    assert str(err.value)


def test_the_last_storable_instant_is_a_valid_bound() -> None:
    lo, hi = value_range("2262-04-11T23:47:15Z")
    assert hi - 1 <= MAX_TIME_US
    assert prefixed("ge2262-04-11T23:47:15Z") == ((lo, END),)


def search(query: list[tuple[str, str]], strict: bool = False) -> fhirsearch.ObservationSearch:
    return parse_search(query, BASE, strict)


def test_the_issue_examples_parse_as_fhir_means_them() -> None:
    s = search([("patient", "pat-a"), ("date", "2026-11-30T07:00:00Z")])
    assert s.spans == ((us(2026, 11, 30, 7), us(2026, 11, 30, 7, 0, 1)),)
    for form in ("pat-a", "Patient/pat-a", f"{BASE}/Patient/pat-a"):
        for name in ("patient", "subject", "subject:Patient", "patient:Patient"):
            s = search([(name, form)])
            assert (s.patient, s.patients) == ("pat-a", ("pat-a",)), (name, form)
    both = search([("patient", "pat-a"), ("subject", "pat-b")])
    assert both.patients == ("pat-a", "pat-b") and both.patient is None  # AND: nothing matches
    assert search([("patient", "pat-a"), ("subject", "Patient/pat-a")]).patient == "pat-a"
    assert search([("patient", "pat-a,pat-b"), ("subject", "pat-b")]).patient == "pat-b"


def test_dates_combine_or_within_and_across_parameters() -> None:
    s = search([("patient", "p"), ("date", "ge2026-11-30T07:00Z"), ("date", "lt2026-11-30T08:00Z")])
    assert s.spans == ((us(2026, 11, 30, 7), us(2026, 11, 30, 8)),)
    s = search([("patient", "p"), ("date", "2026-11-29,2026-12-01")])
    assert s.spans == ((us(2026, 11, 29), us(2026, 11, 30)), (us(2026, 12, 1), us(2026, 12, 2)))
    s = search([("patient", "p"), ("date", "ge2026-12-01"), ("date", "lt2026-11-01")])
    assert s.spans == ()


def test_codes_categories_and_result_parameters() -> None:
    s = search([("patient", "p"), ("code", "8480-6,http://loinc.org|8867-4")])
    assert s.kinds == ("8867-4", "85354-9")  # a BP component selects the panel
    assert search([("patient", "p"), ("code", "59408-5")]).kinds == ("2708-6",)
    assert search([("patient", "p"), ("code", "8867-4"), ("code", "9279-1")]).kinds == ()
    assert search([("patient", "p")]).kinds == fhir.KINDS
    assert search([("patient", "p"), ("category", "vital-signs")]).patient == "p"
    assert search([("patient", "p"), ("category", "laboratory")]).patient is None
    s = search([("patient", "p"), ("_count", "5000"), ("_sort", "-date"), ("_total", "accurate")])
    assert (s.count, s.descending, s.total) == (fhirsearch.MAX_COUNT, True, "accurate")
    assert ("_count", "1000") in s.applied  # the self link says what was used
    lenient = search([("patient", "p"), ("status", "final"), ("_elements", "id")])
    assert lenient.ignored == ["status", "_elements"]
    assert all(name not in ("status", "_elements") for name, _ in lenient.applied)


@pytest.mark.parametrize(("query", "status", "where"), [
    ([], 400, "patient"),
    ([("code", "8867-4")], 400, "patient"),
    ([("patient", "pat-a' OR 1=1")], 400, "patient"),
    ([("subject", "Device/dev-a")], 400, "subject"),
    ([("patient", "p"), ("code", "1234-5")], 400, "code"),
    ([("patient", "p"), ("code", "http://snomed.info/sct|8867-4")], 400, "code"),
    ([("patient", "p"), ("code", "|8867-4")], 400, "code"),
    ([("patient", "p"), ("code:text", "heart")], 400, "code:text"),
    ([("patient", "p"), ("date:missing", "true")], 400, "date:missing"),
    ([("patient", "p"), ("date", "xx2026")], 400, "date"),
    ([("patient", "p"), ("_count", "-1")], 400, "_count"),
    ([("patient", "p"), ("_count", "ten")], 400, "_count"),
    ([("patient", "p"), ("_count", "1"), ("_count", "2")], 400, "_count"),
    ([("patient", "p"), ("_sort", "code")], 400, "_sort"),
    ([("patient", "p"), ("_total", "always")], 400, "_total"),
    ([("patient", "p"), ("_format", "xml")], 406, "_format"),
    ([("patient", "p"), ("_cursor", "after:1:dev:9")], 400, "_cursor"),
    ([("patient", "p"), ("date", ",".join(["2026"] * 21))], 400, "date"),
])
def test_bad_searches_are_refused_with_the_parameter_named(
        query: list[tuple[str, str]], status: int, where: str) -> None:
    with pytest.raises(SearchError) as err:
        search(query)
    assert (err.value.status, err.value.location) == (status, where), err.value.diagnostics
    OperationOutcome.model_validate(fhirsearch.outcome(err.value.diagnostics, err.value.code,
                                                       location=err.value.location))


def test_several_patients_are_refused_after_consent() -> None:
    s = search([("patient", "pat-b,pat-a")])
    assert s.patients == ("pat-a", "pat-b")  # the route checks consent on both first
    with pytest.raises(SearchError) as err:
        s.check_one_patient()
    assert (err.value.status, err.value.location) == (400, "patient")
    search([("patient", "pat-b,pat-a"), ("subject", "pat-a")]).check_one_patient()


def test_strict_handling_refuses_unknown_parameters() -> None:
    with pytest.raises(SearchError) as err:
        search([("patient", "p"), ("status", "final")], strict=True)
    assert err.value.status == 400 and "status" in err.value.diagnostics


@given(time_ns=st.integers(0, 2**63 - 1), device=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
                                                              fullmatch=True),
       code=st.sampled_from(fhir.KINDS))
def test_observation_ids_are_fhir_ids_that_lead_back_to_the_point(time_ns: int, device: str,
                                                                  code: str) -> None:
    oid = fhir.observation_id(time_ns, device, code)
    assert fhirsearch._FHIR_ID.fullmatch(oid), oid
    assert fhir.parse_observation_id(oid) == (time_ns, fhir.device_hash(device), code)


def test_foreign_ids_are_not_ours() -> None:
    assert fhirsearch.check_read_id("123e4567-e89b-12d3-a456-426614174000") is None
    assert fhirsearch.check_read_id("1-0123456789abcdef-1234-5") is None  # not a served kind
    with pytest.raises(SearchError) as err:
        fhirsearch.check_read_id("a_b")
    assert err.value.status == 400


def test_capability_statement_is_valid_and_lists_exactly_what_is_served() -> None:
    doc = fhirsearch.capability_statement(BASE, "1")
    CapabilityStatement.model_validate(doc)
    (rest,) = doc["rest"]
    (resource,) = rest["resource"]
    assert resource["type"] == "Observation"
    assert [i["code"] for i in resource["interaction"]] == ["read", "search-type"]
    names = [p["name"] for p in resource["searchParam"]]
    assert set(names) == set(fhirsearch.SEARCH_PARAMS) | {"_count", "_sort", "_total"}
