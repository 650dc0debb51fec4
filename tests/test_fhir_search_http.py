"""FHIR R4 search as a FHIR client uses it: fhirpy (and plain HTTP) against uvicorn on the real
InfluxDB and ledger.

The world: patient pat-a has a wearable (dev-a_1) reading every 5 minutes on 2026-11-30 from
06:50 to 08:45 UTC, a second device (dev-a_2) whose first six readings carry the *same*
InfluxDB timestamps (so pages must order and cut ties), and two readings at the day's edges;
pat-b has readings too but granted nobody.  Expected results are computed here from the seeded
timestamps with the R4 rules written out, not with the code under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome as FhirpyOutcome
from fhirpy.base.exceptions import ResourceNotFound

from tests.api_support import served
from tests.test_api_http import seal, vitals_at
from vitalchain.api import fhir, vitals
from vitalchain.config import Settings
from vitalchain.storage.apistore import ApiStore
from vitalchain.storage.influx import InfluxClient, Point
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.readings import point_time_ns
from vitalchain.storage.verified import ReadVerifier

FIVE_MIN_US = 300 * 1_000_000


def T(*parts: int) -> int:
    moment = datetime(*parts, tzinfo=UTC)  # type: ignore[misc]
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


START = T(2026, 11, 30, 6, 50)


def reading(device: str, patient: str, seq: int, ts_us: int) -> dict[str, Any]:
    return {"device_id": device, "patient_id": patient, "seq": seq, "ts_us": ts_us,
            "vitals": vitals_at(seq)}


@dataclass
class FhirWorld:
    settings: Settings
    base: str
    tokens: dict[str, str]
    readings: list[dict[str, Any]]  # pat-a's, as seeded
    offset: int
    ledger: Ledger = field(repr=False)

    def client(self, who: str) -> SyncFHIRClient:
        return SyncFHIRClient(f"{self.base}/fhir", authorization=f"Bearer {self.tokens[who]}")

    def get(self, who: str | None, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        headers.update(kwargs.pop("headers", {}))
        url = path if path.startswith("http") else self.base + path
        return httpx.get(url, headers=headers, timeout=30, **kwargs)

    def add(self, raw: list[dict[str, Any]]) -> None:
        """Seal more readings as the stream would (a new window), while clients page."""
        seal(self.settings, self.ledger, raw, self.offset)
        self.offset += len(raw)
        self.readings += [r for r in raw if r["patient_id"] == "pat-a"]


@pytest.fixture
def world(isolated: Settings, tmp_path: Path) -> Iterator[FhirWorld]:
    settings = isolated.with_overrides(state_dir=tmp_path)
    a1 = [reading("dev-a_1", "pat-a", i, START + i * FIVE_MIN_US) for i in range(24)]
    a2 = [reading("dev-a_2", "pat-a", i, START + i * FIVE_MIN_US) for i in range(6)]  # ties
    edges = [reading("dev-a_1", "pat-a", 100, T(2026, 11, 29, 23, 59, 59, 999_999)),
             reading("dev-a_1", "pat-a", 101, T(2026, 12, 1))]
    b = [reading("dev-b", "pat-b", i, START + i * FIVE_MIN_US) for i in range(5)]
    store = ApiStore(tmp_path / "api.sqlite")
    tokens = {name: store.add_user(name, role) for name, role in
              (("root", "admin"), ("alice", "clinician"), ("bob", "clinician"),
               ("audrey", "auditor"))}
    store.add_grant("pat-a", "alice", T(2999, 1, 1), "root")
    store.close()
    with Ledger(settings.ledger_path) as ledger:
        world = FhirWorld(settings, "", tokens, [], 0, ledger)
        world.add(a1[:12] + a2 + b)
        world.add(edges + a1[12:])
        with served(settings, tmp_path / "api.sqlite") as base:
            world.base = base
            yield world


# --- what the server should answer, from the seeded readings ---------------------------------
def order(readings: list[dict[str, Any]], descending: bool = False,
          kinds: tuple[str, ...] = fhir.KINDS) -> list[str]:
    """Identifiers in result order: readings by (InfluxDB time, device), kinds in served order."""
    keyed = sorted(readings, key=lambda r: (point_time_ns(r["ts_us"], r["seq"]), r["device_id"]),
                   reverse=descending)
    return [f"urn:vitalchain:{r['device_id']}:{r['seq']}:{k}" for r in keyed for k in kinds]


def idents(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["identifier"][0]["value"] for e in bundle["entry"]
            if e["search"]["mode"] == "match"]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in bundle["link"] if x["relation"] == relation), None)


def page_through(world: FhirWorld, url: str, who: str = "alice",
                 between: Callable[[int], None] | None = None) -> list[list[str]]:
    """Follow ``next`` links from ``url``; every page must be a valid R4 searchset Bundle."""
    pages: list[list[str]] = []
    while url:
        r = world.get(who, url)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+json")
        body = r.json()
        Bundle.model_validate(body)
        pages.append(idents(body))
        if between:
            between(len(pages))
        url = link(body, "next")
        assert len(pages) < 500, "paging does not end"
    return pages


# --- the issue, prefix by prefix ---------------------------------------------------------------
DAY0, DAY1 = T(2026, 11, 30), T(2026, 12, 1)
DATE_CASES: list[tuple[list[str], Callable[[int], bool]]] = [
    (["2026-11-30T07:00:00Z"], lambda t: T(2026, 11, 30, 7) <= t < T(2026, 11, 30, 7, 0, 1)),
    (["le2026-11-30"], lambda t: t < DAY1),
    (["gt2026-11-30"], lambda t: t >= DAY1),
    (["2026-11-30"], lambda t: DAY0 <= t < DAY1),
    (["eq2026-11-30"], lambda t: DAY0 <= t < DAY1),
    (["ne2026-11-30"], lambda t: not DAY0 <= t < DAY1),
    (["lt2026-11-30"], lambda t: t < DAY0),
    (["eb2026-11-30"], lambda t: t < DAY0),
    (["ge2026-11-30"], lambda t: t >= DAY0),
    (["sa2026-11-30T07:00Z"], lambda t: t >= T(2026, 11, 30, 7, 1)),
    (["gt2026-11-30T07:00Z"], lambda t: t >= T(2026, 11, 30, 7, 1)),
    (["le2026-11-30T07:00Z"], lambda t: t < T(2026, 11, 30, 7, 1)),
    (["2026-11"], lambda t: T(2026, 11, 1) <= t < DAY1),
    (["2026"], lambda t: T(2026, 1, 1) <= t < T(2027, 1, 1)),
    (["2026-11-30T08:00:00+01:00"], lambda t: T(2026, 11, 30, 7) <= t < T(2026, 11, 30, 7, 0, 1)),
    (["2026-11-30T02:05-05:00"], lambda t: T(2026, 11, 30, 7, 5) <= t < T(2026, 11, 30, 7, 6)),
    (["2026-11-29T23:59:59.999999Z"], lambda t: t == T(2026, 11, 29, 23, 59, 59, 999_999)),
    (["ge2026-11-30T07:00Z", "lt2026-11-30T07:30Z"],
     lambda t: T(2026, 11, 30, 7) <= t < T(2026, 11, 30, 7, 30)),
    (["2026-11-29,2026-12-01"], lambda t: not DAY0 <= t < DAY1),
    (["ge2026-12-02"], lambda t: False),
]


def test_dates_match_as_fhir_defines_them(world: FhirWorld) -> None:
    client = world.client("alice")
    for dates, matches in DATE_CASES:
        # fhirpy sends repeated parameters for a list value
        found = client.resources("Observation").search(patient="pat-a", code="8867-4",
                                                       date=dates).limit(1000).fetch_all()
        got = sorted(o["identifier"][0]["value"] for o in found)
        want = sorted(order([r for r in world.readings if matches(r["ts_us"])], kinds=("8867-4",)))
        assert got == want, (dates, len(got), len(want))
    # The first example was a 422 ("'26-11-30T07:00:00Z' is not an ISO 8601").
    r = world.get("alice", "/fhir/Observation",
                  params={"patient": "pat-a", "date": "2026-11-30T07:00:00Z"})
    assert r.status_code == 200 and len(idents(r.json())) == 5 * 2  # dev-a_1 #2 and dev-a_2 #2


# --- counting, sorting, paging -----------------------------------------------------------------
def test_count_counts_resources_and_paging_reaches_every_observation(world: FhirWorld) -> None:
    client = world.client("alice")
    obs = client.resources("Observation").search(patient="pat-a").limit(3).fetch()
    assert len(obs) == 3  # was 15: _count counted readings
    everything = order(world.readings)
    assert len(everything) == 32 * 5
    for descending in (False, True):
        want = order(world.readings, descending)
        # fhirpy follows the next links itself
        got = [o["identifier"][0]["value"] for o in
               client.resources("Observation").search(patient="pat-a")
               .sort("-date" if descending else "date").limit(7)]
        assert got == want, descending
        pages = page_through(world, f"/fhir/Observation?patient=pat-a&_count=7"
                                    f"&_sort={'-date' if descending else 'date'}")
        assert [len(p) for p in pages] == [7] * 22 + [6]
        assert [i for p in pages for i in p] == want
    # the latest values come first with _sort=-date (the issue: "an hour ago")
    newest = client.resources("Observation").search(patient="pat-a").sort("-date").limit(5).fetch()
    assert {o["identifier"][0]["value"] for o in newest} == {
        f"urn:vitalchain:dev-a_1:101:{k}" for k in fhir.KINDS}
    # totals only when asked, and fhirpy's count() (_count=0) gets one
    r = world.get("alice", "/fhir/Observation", params={"patient": "pat-a"})
    assert "total" not in r.json()
    r = world.get("alice", "/fhir/Observation", params={"patient": "pat-a", "_total": "accurate",
                                                        "code": "8480-6", "date": "2026-11-30"})
    assert r.json()["total"] == 30
    assert client.resources("Observation").search(patient="pat-a").count() == 160
    # two code parameters are ANDed: no Observation has both codes
    r = world.get("alice", "/fhir/Observation",
                  params={"patient": "pat-a", "code": ["8867-4", "9279-1"], "_total": "accurate"})
    assert r.status_code == 200 and r.json()["entry"] == [] and r.json()["total"] == 0
    # the end of the results links back; an empty page after it too
    last = world.get("alice", "/fhir/Observation",
                     params={"patient": "pat-a", "_cursor": f"after:{2**62}:zz:4"}).json()
    assert last["entry"] == [] and link(last, "next") is None
    back = world.get("alice", link(last, "previous") or "").json()
    assert idents(back) == order(world.readings)[-100:]
    assert client.resources("Observation").search(patient="pat-a", date="gt2026-11-30").count() == 5


def test_previous_links_lead_back_to_the_same_pages(world: FhirWorld) -> None:
    for sort in ("date", "-date"):
        url = f"/fhir/Observation?patient=pat-a&_count=3&_sort={sort}&code=8867-4,85354-9"
        bodies = []
        while url and len(bodies) < 6:
            body = world.get("alice", url).json()
            bodies.append(body)
            url = link(body, "next")
        assert link(bodies[0], "previous") is None
        for i in range(5, 0, -1):
            back = world.get("alice", link(bodies[i], "previous")).json()
            Bundle.model_validate(back)
            assert idents(back) == idents(bodies[i - 1]), (sort, i)
        # and next from a page reached backwards goes forward again
        again = world.get("alice", link(back, "next")).json()
        assert idents(again) == idents(bodies[1])


def test_pages_stay_stable_while_readings_arrive(world: FhirWorld) -> None:
    before = order(world.readings)
    newer = [reading("dev-a_1", "pat-a", 200 + i, T(2026, 12, 2) + i * FIVE_MIN_US) for i in range(3)]
    late = [reading("dev-a_2", "pat-a", 50, START + 1)]  # inside page 1's range

    def arrive(pages_seen: int) -> None:
        if pages_seen == 2:
            world.add(newer + late)

    pages = page_through(world, "/fhir/Observation?patient=pat-a&_count=10&_sort=date",
                         between=arrive)
    served = [i for p in pages for i in p]
    assert len(served) == len(set(served)), "an Observation was served twice"
    # everything present at the start is served exactly once, in order; the readings that
    # arrived after the cursor follow; the late one (before the cursor) is for a new search
    assert served == before + order(newer)
    assert not set(order(late)) & set(served)

    newest_first = order(world.readings, descending=True)
    more = [reading("dev-a_1", "pat-a", 300, T(2026, 12, 3))]

    def arrive_newer(pages_seen: int) -> None:
        if pages_seen == 1:
            world.add(more)

    pages = page_through(world, "/fhir/Observation?patient=pat-a&_count=10&_sort=-date",
                         between=arrive_newer)
    assert [i for p in pages for i in p] == newest_first  # the new one is before the cursor


# --- consent, references, read by id -----------------------------------------------------------
def outcome_of(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/fhir+json"), r.text
    body = r.json()
    OperationOutcome.model_validate(body)
    return body["issue"][0]["diagnostics"]


def test_patient_and_subject_forms_and_consent(world: FhirWorld) -> None:
    want = order(world.readings)[:20]
    base = f"{world.base}/fhir"
    for params in ({"patient": "Patient/pat-a"}, {"subject": "Patient/pat-a"}, {"subject": "pat-a"},
                   {"subject:Patient": "pat-a"}, {"patient": f"{base}/Patient/pat-a"},
                   {"patient": "pat-a", "subject": "Patient/pat-a"}):
        r = world.get("alice", "/fhir/Observation", params={**params, "_count": 20})
        assert r.status_code == 200, (params, r.text)
        assert idents(r.json()) == want, params
    for params in ({"patient": "pat-a", "subject": "pat-b"}, {"subject": "Patient/pat-b"},
                   {"patient": "pat-b,pat-a", "subject": "pat-a"}):
        r = world.get("alice", "/fhir/Observation", params=params)
        assert r.status_code == 403 and "pat-b has not granted alice" in outcome_of(r), params
    # an ungranted patient and one that does not exist get the same answer
    granted_none = world.get("alice", "/fhir/Observation", params={"patient": "pat-b"})
    nobody = world.get("alice", "/fhir/Observation", params={"patient": "pat-zz"})
    assert granted_none.status_code == nobody.status_code == 403
    assert outcome_of(granted_none).replace("pat-b", "X") == outcome_of(nobody).replace("pat-zz", "X")


def test_read_by_id(world: FhirWorld) -> None:
    client = world.client("alice")
    listed = client.resources("Observation").search(patient="pat-a").limit(12).fetch()
    for resource in listed:
        read = client.get("Observation", resource["id"])
        Observation.model_validate(read)
        assert read == resource.serialize()
    r = world.get("alice", f"/fhir/Observation/{listed[0]['id']}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")

    # bob has no grant: pat-a's Observation, pat-b's, and one that never existed look alike
    pat_b = fhir.observation_id(point_time_ns(START, 0), "dev-b", "8867-4")
    never = fhir.observation_id(point_time_ns(START, 0) + 7, "dev-a_1", "8867-4")
    answers = {}
    for who, oid in (("bob", listed[0]["id"]), ("alice", pat_b), ("alice", never), ("bob", never)):
        r = world.get(who, f"/fhir/Observation/{oid}")
        assert r.status_code == 404, (who, oid, r.text)
        answers[(who, oid)] = outcome_of(r).replace(oid, "ID")
    assert len(set(answers.values())) == 1, answers
    with pytest.raises(ResourceNotFound):
        world.client("bob").get("Observation", listed[0]["id"])
    r = world.get("alice", "/fhir/Observation/not_an_id")
    assert r.status_code == 400 and "FHIR id" in outcome_of(r)
    r = world.get("audrey", f"/fhir/Observation/{listed[0]['id']}")
    assert r.status_code == 403 and "requires role clinician" in outcome_of(r)

    entries = world.get("audrey", "/audit/access", params={"limit": 1000}).json()["entries"]
    reads = [(e["user"], e["patient_id"], e["allowed"], e["status"]) for e in entries
             if e["path"].startswith("/fhir/Observation/")]
    assert reads[:12] == [("alice", "pat-a", True, 200)] * 12
    assert ("bob", None, True, 404) in reads and ("audrey", None, False, 403) in reads


# --- metadata, errors, unknown parameters ------------------------------------------------------
def test_metadata_and_every_error_is_fhir(world: FhirWorld) -> None:
    r = world.get(None, "/fhir/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    statement = CapabilityStatement.model_validate(r.json())
    assert statement.fhirVersion == "4.0.1"
    assert r.json()["implementation"]["url"] == f"{world.base}/fhir"

    cases: list[tuple[str | None, str, dict[str, Any], int, str]] = [
        (None, "/fhir/Observation", {"patient": "pat-a"}, 401, "Bearer"),
        ("audrey", "/fhir/Observation", {"patient": "pat-a"}, 403, "requires role clinician"),
        ("root", "/fhir/Observation", {"patient": "pat-a"}, 403, "requires role clinician"),
        ("alice", "/fhir/Observation", {}, 400, "patient"),
        ("alice", "/fhir/Observation", {"patient": "pat-a", "date": "26-11-30T07:00:00Z"}, 400,
         "not a FHIR date"),
        ("alice", "/fhir/Observation", {"patient": "pat-a", "date": "ap2026"}, 400, "'ap'"),
        ("alice", "/fhir/Observation", {"patient": "pat-a", "code:not": "8867-4"}, 400, ":not"),
        ("alice", "/fhir/Observation", {"patient": "pat-a", "_sort": "_lastUpdated"}, 400, "_sort"),
        ("alice", "/fhir/Observation", {"patient": "pat-a", "_format": "xml"}, 406, "JSON"),
        ("alice", "/fhir/Patient/pat-a", {}, 404, "Not Found"),
    ]
    for who, path, params, status, text in cases:
        r = world.get(who, path, params=params)
        assert r.status_code == status, (who, path, params, r.text)
        assert text in outcome_of(r), (path, params, r.text)
    assert world.get(None, "/fhir/Observation").headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(FhirpyOutcome):
        world.client("alice").resources("Observation").search(patient="pat-a", date="bad").fetch()

    # Unknown parameters: ignored and said so (FHIR's default), or refused when strict
    r = world.get("alice", "/fhir/Observation", params={"patient": "pat-a", "status": "final"})
    body = r.json()
    assert r.status_code == 200 and len(idents(body)) == 100
    notes = [e["resource"] for e in body["entry"] if e["search"]["mode"] == "outcome"]
    assert "status" in notes[0]["issue"][0]["diagnostics"]
    assert ("status", "final") not in parse_qsl(urlsplit(link(body, "self") or "").query)
    r = world.get("alice", "/fhir/Observation", params={"patient": "pat-a", "status": "final"},
                  headers={"Prefer": "handling=strict"})
    assert r.status_code == 400 and "status" in outcome_of(r)

    # every one of these requests is in the access log, the public metadata read too
    entries = world.get("audrey", "/audit/access", params={"limit": 1000}).json()["entries"]
    fhir_entries = [e for e in entries if e["path"].startswith("/fhir/")]
    assert len(fhir_entries) == 1 + len(cases) + 1 + 1 + 2  # + 401 probe, fhirpy, 2 unknown-param
    assert (fhir_entries[0]["path"], fhir_entries[0]["user"], fhir_entries[0]["allowed"]) == \
        ("/fhir/metadata", None, True)
    assert [e["status"] for e in fhir_entries[1:len(cases) + 1]] == [c[3] for c in cases]


def test_unreadable_points_are_served_as_entered_in_error_not_hidden(world: FhirWorld) -> None:
    """A stored point that cannot be rebuilt is never served with a value: it stays in the
    searchset as ``entered-in-error`` with no value, tagged with its integrity state (verified
    reads, docs/API.md), so a FHIR client sees it is there and cannot chart it."""
    async def corrupt() -> None:  # an integer vital overwritten with a fraction
        async with InfluxClient(world.settings) as influx:
            await influx.write([Point("readings", {"device_id": "dev-a_1", "patient_id": "pat-a"},
                                      {"hr": 71.5}, point_time_ns(START + 3 * FIVE_MIN_US, 3))])

    asyncio.run(corrupt())
    r = world.get("alice", "/fhir/Observation", params={"patient": "pat-a", "_count": 50})
    body = r.json()
    Bundle.model_validate(body)
    (hr,) = [e["resource"] for e in body["entry"] if e["search"]["mode"] == "match"
             and e["resource"]["identifier"][0]["value"] == "urn:vitalchain:dev-a_1:3:8867-4"]
    assert hr["status"] == "entered-in-error" and "valueQuantity" not in hr and hr["dataAbsentReason"]
    assert hr["meta"]["tag"][0]["code"] == "altered"
    served = [e["resource"] for e in body["entry"] if e["search"]["mode"] == "match"
              and e["resource"]["identifier"][0]["value"].startswith("urn:vitalchain:dev-a_1:3:")]
    assert len(served) == 5 and all(("valueQuantity" not in o and "component" not in o) or
                                    all("dataAbsentReason" in c for c in o["component"]) for o in served)


def test_a_fetch_never_splits_readings_that_share_a_timestamp(world: FhirWorld) -> None:
    """dev-a_1 #0 and dev-a_2 #0 share one InfluxDB timestamp: a fetch of one reading returns
    both, in key order, so no cursor can fall between them whatever order InfluxDB gives."""
    t = point_time_ns(START, 0)

    async def fetch() -> list[list[tuple[int, str]]]:
        async with InfluxClient(world.settings) as influx:
            source = vitals.PatientReadings(influx, ReadVerifier(world.ledger, world.settings.raw_topic), "pat-a")
            asc = await source.page(START, START + 1, None, False, False, 1)
            desc = await source.page(START, START + 1, None, False, True, 1)
            after = await source.page(START, START + 1, (t, "dev-a_1"), False, False, 1)
            before = await source.page(START, START + 1, (t, "dev-a_2"), False, True, 1)
            return [[k for k, _ in rows] for rows in (asc, desc, after, before)]

    asc, desc, after, before = asyncio.run(fetch())
    assert asc == [(t, "dev-a_1"), (t, "dev-a_2")]
    assert desc == [(t, "dev-a_2"), (t, "dev-a_1")]
    assert after == [(t, "dev-a_2")] and before == [(t, "dev-a_1")]
