"""GET /clinician/patients in one batch: the same verdicts as one patient at a time.

The clinicians' list fetches every granted patient's newest points in one InfluxDB query and
verifies them in one call (``vitalchain.api.vitals.latest_readings``), and looks up every
device's newest sealed reading in one worker thread.  These tests build patients in every state
the list can show, on the real InfluxDB and ledger (sealed as the stream seals: tests.test_api_http
``seal``), and check that the batch says exactly what the per-patient path says, and what each
patient's state is: sealed, received (open window), altered newest readings withheld (more than
one first page of them, so the batch hands over to paging), two devices on one patient sharing
timestamps, a point nobody sealed, a patient with nothing stored, a deleted newest reading.
"""

from __future__ import annotations

import asyncio
import copy
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.audit_support import influx_query, influx_write, stored_leaf_field
from tests.common_support import write_registry
from tests.test_api_http import MINUTE_US, SALT_KEY, World, make_world, seal, vitals_at
from vitalchain.api import vitals
from vitalchain.api.app import _verifier
from vitalchain.config import Settings
from vitalchain.core.integrity import canonical_reading, reading_leaf_hash
from vitalchain.storage import influx as influx_module
from vitalchain.storage.apistore import ApiStore
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.readings import reading_from_row, reading_point

PATIENTS = ["pat-s", "pat-r", "pat-w", "pat-2", "pat-u", "pat-none", "pat-d", "pat-a"]


def _raw(device: str, patient: str, seq: int, ts_us: int) -> dict[str, Any]:
    return {"device_id": device, "patient_id": patient, "seq": seq, "ts_us": ts_us,
            "vitals": vitals_at(seq)}


def _point(raw: dict[str, Any], window_id: str, leaf: bytes | None = None) -> Any:
    canonical = canonical_reading(raw, SALT_KEY)
    return reading_point(canonical, leaf or reading_leaf_hash(canonical), window_id, False,
                         raw["ts_us"] + 1000)


def _row(settings: Settings, device: str, seq: int) -> dict[str, Any]:
    (row,) = influx_query(settings, f"SELECT * FROM readings WHERE device_id = '{device}' "
                                    f"AND seq = {seq}")
    return row


def build(world: World) -> None:
    """The patients of PATIENTS (pat-a is make_world's: sealed 0..29 in p0-0 and p0-20)."""
    s, now = world.settings, world.now_us
    t = [now - (20 - i) * MINUTE_US // 4 for i in range(20)]
    raw: list[dict[str, Any]] = []
    raw += [_raw("dev-s", "pat-s", i, t[i]) for i in range(10)]
    raw += [_raw("dev-r", "pat-r", i, t[i]) for i in range(5)]
    raw += [_raw("dev-w", "pat-w", i, t[i]) for i in range(12)]
    raw += [_raw(d, "pat-2", i, t[i]) for d in ("dev-2a", "dev-2b") for i in range(6)]
    raw += [_raw("dev-d", "pat-d", i, t[i]) for i in range(4)]
    with Ledger(s.ledger_path) as ledger:  # offsets 35.. after make_world's 0..34
        header = seal(s, ledger, raw, 35)
    open_window = f"p0-{header['last_offset'] + 1}"
    influx_write(s, [_point(_raw("dev-r", "pat-r", i, t[i]), open_window) for i in (5, 6)]
                 # a point nobody sealed: its window is sealed without it
                 + [_point(_raw("dev-2b", "pat-2", 6, t[6]), header["window_id"]),
                    _point(_raw("dev-u", "pat-u", 0, t[1]), header["window_id"])])
    for seq in range(4, 12):  # pat-w's newest 8 altered after sealing: more than a first page
        row = _row(s, "dev-w", seq)
        canonical = copy.deepcopy(reading_from_row(row).canonical)
        canonical["vitals"]["hr"] = 200
        influx_write(s, [reading_point(canonical, stored_leaf_field(row), row["window_id"],
                                       False, int(row["received_us"]))])
    gone = _row(s, "dev-d", 3)  # pat-d's newest sealed reading deleted from InfluxDB
    influx_query(s, f"DELETE FROM readings WHERE device_id = 'dev-d' AND time = {gone['time']}")
    write_registry(s.state_dir, {"dev-a_1": "pat-a", "dev-b": "pat-b", "dev-s": "pat-s",
                                 "dev-r": "pat-r", "dev-w": "pat-w", "dev-2a": "pat-2",
                                 "dev-2b": "pat-2", "dev-u": "pat-u", "dev-d": "pat-d",
                                 "dev-none": "pat-none"})


@pytest.fixture
def world(isolated: Settings, tmp_path: Path) -> Iterator[World]:
    yield from make_world(isolated.with_overrides(state_dir=tmp_path), tmp_path)


def _both(world: World, batch: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(batched, one by one) answers of latest_readings / latest_reading for PATIENTS."""
    verifier = _verifier(world.client.app.state.ctx)  # the API's own: ledger, topic, memo

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        async with InfluxClient(world.settings) as influx:
            saved = vitals.LATEST_BATCH_PATIENTS
            vitals.LATEST_BATCH_PATIENTS = batch
            try:
                batched = await vitals.latest_readings(influx, verifier, PATIENTS)
            finally:
                vitals.LATEST_BATCH_PATIENTS = saved
            single = {p: await vitals.latest_reading(influx, verifier, p) for p in PATIENTS}
        return batched, single

    return asyncio.run(run())


@pytest.mark.parametrize("batch", [50, 3])
def test_the_batch_gives_every_patient_the_per_patient_answer(world: World, batch: int) -> None:
    build(world)
    batched, single = _both(world, batch)
    assert list(batched) == PATIENTS
    assert batched == single
    latest = {p: (a["latest"] or {}) for p, a in batched.items()}
    assert (latest["pat-s"]["seq"], latest["pat-s"]["state"]) == (9, "sealed")
    assert (latest["pat-r"]["seq"], latest["pat-r"]["state"]) == (6, "received")
    assert (latest["pat-w"]["seq"], latest["pat-w"]["state"]) == (3, "sealed")
    assert [(w["seq"], w["state"]) for w in batched["pat-w"]["withheld"]] == \
        [(s, "altered") for s in range(11, 3, -1)]
    assert "vitals" not in batched["pat-w"]["withheld"][0]
    assert latest["pat-2"]["state"] == "sealed" and latest["pat-2"]["seq"] == 5
    assert [(w["device_id"], w["seq"], w["state"]) for w in batched["pat-2"]["withheld"]] == \
        [("dev-2b", 6, "unknown")]
    assert batched["pat-u"]["latest"] is None
    assert [w["state"] for w in batched["pat-u"]["withheld"]] == ["unknown"]
    assert batched["pat-none"] == {"latest": None, "withheld": [], "withheld_truncated": False}
    assert (latest["pat-d"]["seq"], latest["pat-a"]["seq"]) == (2, 29)


def test_the_patients_list_shows_each_state_and_what_is_missing(world: World) -> None:
    build(world)
    store_until = world.now_us + 3600 * 1_000_000
    store = ApiStore(world.store_path)
    for p in PATIENTS[:-1]:
        store.add_grant(p, "alice", store_until, "root")
    store.close()
    began = time.perf_counter()
    r = world.get("alice", "/clinician/patients")
    assert r.status_code == 200, r.text
    assert time.perf_counter() - began < 5
    by = {p["patient_id"]: p for p in r.json()["patients"]}
    assert sorted(by) == sorted(PATIENTS)
    assert by["pat-r"]["latest"]["state"] == "received" and not by["pat-r"]["latest"]["verified"]
    assert by["pat-s"]["latest"]["verified"] and by["pat-s"]["news2"] is not None
    assert by["pat-w"]["latest"]["seq"] == 3 and len(by["pat-w"]["withheld"]) == 8
    assert by["pat-u"]["latest"] is None and by["pat-u"]["news2"] is None
    (missing,) = by["pat-d"]["missing_newer"]
    assert (missing["device_id"], missing["seq"], missing["state"]) == ("dev-d", 3, "missing")
    for p in ("pat-s", "pat-r", "pat-w", "pat-2", "pat-u", "pat-none", "pat-a"):
        assert by[p]["missing_newer"] == [], (p, by[p]["missing_newer"])


def test_influx_clients_share_one_verifying_tls_context(isolated: Settings) -> None:
    async def contexts() -> list[ssl.SSLContext]:
        out = []
        for _ in range(2):
            async with InfluxClient(isolated) as client:
                out.append(client._http()._transport._pool._ssl_context)  # type: ignore[attr-defined]
        return out

    first, second = asyncio.run(contexts())
    assert first is second is influx_module._tls_context()
    assert first.verify_mode is ssl.CERT_REQUIRED and first.check_hostname
