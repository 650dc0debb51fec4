"""Verified reads on the real InfluxDB and ledger: what a clinician sees is what was sealed.

An attacker with write access to InfluxDB alters a sealed reading or inserts one nobody sent;
the API, FHIR and the downsampled vitals must withhold both (never a value, never in NEWS2 or
"latest") and say so, while readings of a still-open window are shown, marked ``received``.
The world is ``tests.test_api_http.make_world``: pat-a has dev-a_1 seq 0..29 (one a minute, the
newest a minute ago, hr 120 and NEWS2 8), sealed in windows p0-0 and p0-20 of partition 0,
which is sealed up to offset 34, so its open window is p0-35.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from tests.audit_support import influx_query, influx_write, stored_leaf_field
from tests.test_api_anchored import anchor_all
from tests.test_api_http import MINUTE_US, SALT_KEY, World, make_world, seal
from vitalchain.anchor.deploy import deploy
from vitalchain.api.news2 import news2
from vitalchain.config import Settings
from vitalchain.core.integrity import canonical_reading, reading_leaf_hash
from vitalchain.core.timeutil import iso_from_us
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.readings import reading_from_row, reading_point

# The documented FHIR tag system of the verified-read state (docs/API.md), spelled out on purpose.
INTEGRITY_SYSTEM = "https://vitalchain.dev/fhir/CodeSystem/reading-integrity"
# NEWS2 14: rr 28 (3), SpO2 88 (3), sys 85 (3), hr 140 (3), temp 39.5 (2).
ALARMING = {"hr": 140, "spo2": 88, "rr": 28, "temp_c": 39.5, "sys": 85, "dia": 50}


@pytest.fixture
def world(isolated: Settings, tmp_path: Path) -> Iterator[World]:
    yield from make_world(isolated.with_overrides(state_dir=tmp_path), tmp_path)


def stored_row(settings: Settings, device: str, seq: int) -> dict[str, Any]:
    rows = influx_query(settings, f"SELECT * FROM readings WHERE device_id = '{device}' "
                                  f"AND seq = {seq}")
    assert len(rows) == 1, rows
    return rows[0]


def alter(settings: Settings, device: str, seq: int, **vitals: float) -> None:
    """Rewrite a stored point in place with other vitals, keeping its stored leaf and window."""
    row = stored_row(settings, device, seq)
    canonical = copy.deepcopy(reading_from_row(row).canonical)
    canonical["vitals"].update(vitals)
    influx_write(settings, [reading_point(canonical, stored_leaf_field(row), row["window_id"],
                                          bool(row["late"]), int(row["received_us"]))])


def insert(settings: Settings, device: str, seq: int, ts_us: int, window_id: str,
           vitals: dict[str, Any], patient: str = "pat-a") -> dict[str, Any]:
    """Write a well-formed point straight into InfluxDB (salted and hashed like the stream's)."""
    canonical = canonical_reading({"device_id": device, "patient_id": patient, "seq": seq,
                                   "ts_us": ts_us, "vitals": vitals}, SALT_KEY)
    influx_write(settings, [reading_point(canonical, reading_leaf_hash(canonical), window_id,
                                          False, ts_us + 1000)])
    return canonical


def patient_a(world: World) -> dict[str, Any]:
    r = world.get("alice", "/clinician/patients")
    assert r.status_code == 200, r.text
    (patient,) = r.json()["patients"]
    return patient


def vitals_of(world: World) -> dict[str, Any]:
    r = world.get("alice", "/clinician/patients/pat-a/vitals",
                  params={"start": iso_from_us(world.now_us - 40 * MINUTE_US),
                          "end": iso_from_us(world.now_us + MINUTE_US), "max_points": 500})
    assert r.status_code == 200, r.text
    return r.json()


def fhir_of(world: World, **params: Any) -> dict[tuple[str, int | str], list[dict[str, Any]]]:
    """Observations by (device, seq), after validating the Bundle as FHIR R4."""
    r = world.get("alice", "/fhir/Observation", params={"patient": "pat-a", "_count": 1000, **params})
    assert r.status_code == 200, r.text
    body = r.json()
    Bundle.model_validate(body)
    out: dict[tuple[str, int | str], list[dict[str, Any]]] = {}
    for entry in body["entry"]:
        _, device, seq, _ = entry["resource"]["identifier"][0]["value"].rsplit(":", 3)
        out.setdefault((device, int(seq) if seq.isdigit() else seq), []).append(entry["resource"])
    return out


def tag(resource: dict[str, Any]) -> str:
    (only,) = [t["code"] for t in resource["meta"]["tag"] if t["system"] == INTEGRITY_SYSTEM]
    return only


def has_value(resource: dict[str, Any]) -> bool:
    return "valueQuantity" in resource or any("valueQuantity" in c
                                              for c in resource.get("component", []))


def test_a_reading_altered_after_sealing_is_withheld_everywhere(world: World) -> None:
    before = patient_a(world)
    assert before["latest"]["seq"] == 29 and before["news2"]["score"] == 8

    alter(world.settings, "dev-a_1", 29, hr=121)  # one beat: the leaf no longer matches
    alter(world.settings, "dev-a_1", 10, hr=250)  # would dominate any hr_max it got into

    after = patient_a(world)
    latest = after["latest"]
    assert latest["seq"] == 28  # the newest reading that still matches its sealed leaf
    assert max(p["hr_max"] for p in vitals_of(world)["points"]) == 74  # neither 250, 121 nor 120
    assert latest["state"] == "sealed" and before["latest"]["state"] == "sealed"
    assert after["news2"] == news2(latest["vitals"]).to_dict() and after["news2"]["score"] == 0
    (withheld,) = after["withheld"]
    assert (withheld["device_id"], withheld["seq"], withheld["state"]) == ("dev-a_1", 29, "altered")
    assert "vitals" not in withheld and "altered after sealing" in withheld["reason"]

    series = vitals_of(world)
    assert series["states"] == {"received": 0, "sealed": 28, "anchored": 0, "altered": 2,
                                "unknown": 0}
    assert sum(p["n"] for p in series["points"]) == 28
    assert max(p["hr_max"] for p in series["points"]) == 74  # neither 250, 121 nor 120
    assert sorted(w["seq"] for w in series["withheld"]) == [10, 29]
    assert series["withheld_total"] == 2 and series["late"][0]["seq"] == 3

    obs = fhir_of(world)
    for resource in obs[("dev-a_1", 29)] + obs[("dev-a_1", 10)]:
        assert resource["status"] == "entered-in-error" and tag(resource) == "altered"
        assert not has_value(resource) and "extension" not in resource  # no value, no proof link
        assert "altered after sealing" in resource["note"][0]["text"]
    bp = next(r for r in obs[("dev-a_1", 29)] if r["code"]["coding"][0]["code"] == "85354-9")
    assert [c["dataAbsentReason"]["coding"][0]["code"] for c in bp["component"]] == ["error"] * 2
    for resource in obs[("dev-a_1", 28)]:
        assert resource["status"] == "final" and tag(resource) == "sealed" and has_value(resource)
    # the proof service agrees: no proof for the altered reading
    assert world.get("audrey", "/audit/proofs/dev-a_1/29").status_code == 409


def test_a_reading_inserted_into_influxdb_is_unknown_and_never_latest(world: World) -> None:
    now = time.time_ns() // 1000
    # The attack of the issue: a seq never sent, newest, NEWS2 14, claiming a sealed window.
    insert(world.settings, "dev-a_1", 30, now, "p0-20", ALARMING)
    insert(world.settings, "dev-a_1", 31, now - 2_000, "p0-999", ALARMING)  # cannot be open
    insert(world.settings, "dev-evil", 0, now - 1_000, "made-up", ALARMING)  # no stream window
    assert news2(ALARMING).score == 14

    patient = patient_a(world)
    assert patient["latest"]["seq"] == 29 and patient["news2"]["score"] == 8
    assert max(p["hr_max"] for p in vitals_of(world)["points"]) == 120  # the real newest, not 140
    assert patient["latest"]["state"] == "sealed" and patient["news2"]["risk"] == "high"
    withheld = {(w["device_id"], w["seq"]): w for w in patient["withheld"]}
    assert set(withheld) == {("dev-a_1", 30), ("dev-a_1", 31), ("dev-evil", 0)}
    assert all(w["state"] == "unknown" and "vitals" not in w for w in withheld.values())
    assert "window p0-20 is sealed" in withheld[("dev-a_1", 30)]["reason"]
    assert "cannot be open" in withheld[("dev-a_1", 31)]["reason"]
    assert "no stream window" in withheld[("dev-evil", 0)]["reason"]

    series = vitals_of(world)
    assert series["states"]["unknown"] == 3 and series["states"]["sealed"] == 30
    assert sum(p["n"] for p in series["points"]) == 30
    assert max(p["hr_max"] for p in series["points"]) == 120  # the real newest, not 140

    obs = fhir_of(world)
    for key in (("dev-a_1", 30), ("dev-a_1", 31), ("dev-evil", 0)):
        assert len(obs[key]) == 5
        for resource in obs[key]:
            assert resource["status"] == "entered-in-error" and tag(resource) == "unknown"
            assert not has_value(resource)
            absent = resource.get("component", [resource])
            assert [a["dataAbsentReason"]["coding"][0]["code"] for a in absent] \
                == ["error"] * len(absent)
    assert all(r["status"] == "final" for r in obs[("dev-a_1", 29)])


def test_a_reading_of_the_open_window_is_shown_marked_received(world: World) -> None:
    now = time.time_ns() // 1000
    raw = {"device_id": "dev-a_1", "patient_id": "pat-a", "seq": 30, "ts_us": now,
           "vitals": ALARMING}
    # What the stream does between writing a window's points and appending it to the ledger
    # (and what a reading queryable before sealing will look like): window p0-35 is open.
    insert(world.settings, "dev-a_1", 30, now, "p0-35", ALARMING)

    patient = patient_a(world)
    latest = patient["latest"]
    assert (latest["seq"], latest["state"]) == (30, "received") and latest["vitals"] == ALARMING
    assert patient["news2"]["score"] == 14 and patient["withheld"] == []  # clinicians need it now
    series = vitals_of(world)
    assert series["states"]["received"] == 1 and sum(p["n_received"] for p in series["points"]) == 1
    assert max(p["hr_max"] for p in series["points"]) == 140
    (received,) = fhir_of(world, date=f"ge{iso_from_us(now)}").values()
    for resource in received:
        assert resource["status"] == "preliminary" and tag(resource) == "received"
        assert has_value(resource) and "not sealed yet" in resource["note"][0]["text"]
        assert "extension" not in resource  # no proof exists yet

    with Ledger(world.settings.ledger_path) as ledger:
        seal(world.settings, ledger, [raw], 35)  # the window closes: same point, now sealed
    assert patient_a(world)["latest"]["state"] == "sealed"
    (sealed,) = fhir_of(world, date=f"ge{iso_from_us(now)}").values()
    assert {(r["status"], tag(r)) for r in sealed} == {("final", "sealed")}

    # p0-35 is sealed now: a point claiming it, and absent from it, is nobody's reading.
    insert(world.settings, "dev-a_1", 31, now + 1, "p0-35", ALARMING)
    patient = patient_a(world)
    assert patient["latest"]["seq"] == 30 and patient["withheld"][0]["state"] == "unknown"


def test_anchored_readings_are_marked_anchored(isolated: Settings, tmp_path: Path) -> None:
    base = isolated.with_overrides(state_dir=tmp_path, anchor_every_windows=1,
                                   anchor_interval_seconds=0.0, anchor_confirmations=1)
    settings = base.with_overrides(anchor_contract=deploy(base, record=False).address)
    for world in make_world(settings, tmp_path):
        assert patient_a(world)["latest"]["state"] == "sealed"
        assert anchor_all(settings) == 2
        assert patient_a(world)["latest"]["state"] == "anchored"
        series = vitals_of(world)
        assert series["states"]["anchored"] == 30 and series["states"]["sealed"] == 0
        obs = fhir_of(world)
        assert {(r["status"], tag(r)) for rs in obs.values() for r in rs} == {("final", "anchored")}
        # a window sealed after the anchor is sealed, not anchored
        now = time.time_ns() // 1000
        with Ledger(settings.ledger_path) as ledger:
            seal(settings, ledger, [{"device_id": "dev-a_1", "patient_id": "pat-a", "seq": 30,
                                     "ts_us": now, "vitals": ALARMING}], 35)
        latest = patient_a(world)["latest"]
        assert (latest["seq"], latest["state"]) == (30, "sealed")
        alter(settings, "dev-a_1", 30, hr=141)
        latest = patient_a(world)["latest"]
        assert (latest["seq"], latest["state"]) == (29, "anchored")


def test_a_deleted_newest_reading_is_reported_missing(world: World) -> None:
    registry = world.settings.state_dir / "devices" / "registry.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text('{"dev-a_1": "pat-a", "dev-b": "pat-b"}')
    assert patient_a(world)["missing_newer"] == []

    row = stored_row(world.settings, "dev-a_1", 29)  # hr 120, NEWS2 8: deleted to hide it
    influx_query(world.settings, f"DELETE FROM readings WHERE device_id = 'dev-a_1' "
                                 f"AND time = {row['time']}")
    patient = patient_a(world)
    assert patient["latest"]["seq"] == 28 and patient["news2"]["score"] == 0
    (missing,) = patient["missing_newer"]
    assert (missing["device_id"], missing["seq"], missing["state"]) == ("dev-a_1", 29, "missing")
    assert missing["window_id"] == "p0-20" and "absent from InfluxDB" in missing["reason"]

    registry.write_text("not json")  # unreadable registry: not checked, and said so (null)
    assert patient_a(world)["missing_newer"] is None
