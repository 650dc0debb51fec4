"""Readings are queryable before their window seals (issue #14, item 3), on the real services.

The stream writes each reading to InfluxDB on receipt (``ingest/receipts.py``); the API serves it
at once as ``received`` (not verified), then ``sealed`` once its window is in the ledger, then
``anchored``.  A worker killed after the receipt write and before the seal leaves nothing doubled
after the replay: the replay rewrites the same points.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.common_support import wait_until, write_registry
from tests.stream_support import (
    SECOND,
    T0,
    Worker,
    all_done,
    check_sealed,
    influx_rows,
    make_input,
    produce,
)
from tests.test_api_anchored import anchor_all
from tests.test_api_verified_reads import alter, insert
from vitalchain.anchor.deploy import deploy
from vitalchain.api.app import create_app
from vitalchain.audit.engine import run_audit
from vitalchain.config import Settings
from vitalchain.storage.apistore import ApiStore
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.readings import point_time_ns

pytestmark = pytest.mark.e2e

DEVICE, PATIENT = "dev-early", "pat-early"
VITALS = {"hr": 72, "spo2": 91, "rr": 18, "temp_c": 37.2, "sys": 118, "dia": 76}


def stream_settings(base: Settings, window_s: float, idle_s: float) -> Settings:
    return base.with_overrides(window_seconds=window_s, idle_seal_seconds=idle_s,
                               stream_app_id=f"vc-early-{uuid.uuid4().hex[:8]}")


class Clinician:
    """The API in process (its lifespan runs once), with one clinician granted ``PATIENT``."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        write_registry(settings.state_dir, {DEVICE: PATIENT})
        store = ApiStore(tmp_path / "api.sqlite")
        self.token = store.add_user("alice", "clinician")
        store.add_grant(PATIENT, "alice", time.time_ns() // 1000 + 3600 * 1_000_000, "root")
        store.close()
        self.app = create_app(settings, seal_seconds=3600, store_path=str(tmp_path / "api.sqlite"))

    def session(self) -> Iterator[TestClient]:
        with TestClient(self.app) as client:
            client.headers["Authorization"] = f"Bearer {self.token}"
            yield client


def latest(client: TestClient) -> dict[str, Any] | None:
    response = client.get("/clinician/patients")
    assert response.status_code == 200, response.text
    (patient,) = response.json()["patients"]
    return patient["latest"]


def integrity_tags(client: TestClient) -> set[tuple[str, str]]:
    """(status, integrity tag) of every Observation of the patient, through FHIR search."""
    bundle = client.get("/fhir/Observation", params={"patient": PATIENT}).json()
    out = set()
    for entry in bundle.get("entry", []):
        resource = entry["resource"]
        tags = [t["code"] for t in resource["meta"]["tag"]
                if t["system"].endswith("reading-integrity")]
        out.add((resource["status"], tags[0]))
    return out


def test_a_reading_is_served_received_then_sealed_then_anchored(isolated: Settings, fresh_stack,
                                                               tmp_path: Path) -> None:
    anvil = fresh_stack(("anvil",)).settings
    base = isolated.with_overrides(state_dir=tmp_path, eth_port=anvil.eth_port,
                                   anchor_every_windows=1, anchor_interval_seconds=0.0,
                                   anchor_confirmations=1)
    base = base.with_overrides(anchor_contract=deploy(base, record=False).address)
    # Windows of 60 s, sealed after 8 s without records: long enough to look at it unsealed.
    settings = stream_settings(base, window_s=60.0, idle_s=8.0)
    worker = Worker(settings, "a", tmp_path)
    sessions = Clinician(settings, tmp_path).session()
    client = next(sessions)
    try:
        wait_until(lambda: "stream:" in worker.log_path.read_text(errors="replace"), 60,
                   "the stream worker to start")
        now = time.time_ns() // 1000
        records = [{"device_id": DEVICE, "patient_id": PATIENT, "seq": i,
                    "ts_us": now - (4 - i) * 100_000, "vitals": VITALS} for i in range(5)]
        sent = time.monotonic()
        ends = produce(settings, records, received_us=now)

        def newest_received() -> bool:
            got = latest(client)
            return got is not None and got["seq"] == 4

        wait_until(newest_received, 20, "the newest reading to be served", interval=0.05)
        visible_after = time.monotonic() - sent
        got = latest(client)
        assert got is not None
        with Ledger(settings.ledger_path) as ledger:
            assert ledger.reading_count() == 0, "sealed already: the test saw nothing unsealed"
        assert got["state"] == "received" and got["verified"] is False, got
        assert got["vitals"] == VITALS
        assert integrity_tags(client) == {("preliminary", "received")}
        print(f"served {visible_after:.2f} s after the produce (window still open)")
        assert visible_after < 5.0, f"a received reading took {visible_after:.2f} s to show"

        def state_is(state: str) -> bool:
            now_latest = latest(client)
            return now_latest is not None and now_latest["state"] == state

        wait_until(lambda: state_is("sealed"), 60, "the window to seal", interval=0.3)
        assert latest(client)["verified"] is True
        assert integrity_tags(client) == {("final", "sealed")}
        assert all_done(settings, ends)
        anchor_all(settings)
        wait_until(lambda: state_is("anchored"), 20, "the reading to show anchored", interval=0.3)
        assert integrity_tags(client) == {("final", "anchored")}
    finally:
        next(sessions, None)
        worker.kill(signal.SIGTERM)


def test_sigkill_between_receipt_write_and_seal_leaves_nothing_doubled(isolated: Settings,
                                                                       tmp_path: Path) -> None:
    # Worker A seals nothing for a minute: every reading is written on receipt, none sealed.
    settings = stream_settings(isolated.with_overrides(state_dir=tmp_path), 60.0, 60.0)
    inp = make_input(devices=6, seconds=6)
    # One window per partition here, so nothing can be late: drop make_input's late readings.
    inp.records = [r for r in inp.records if (r["device_id"], r["seq"]) not in inp.late]
    for key in inp.late:
        del inp.unique[key]
    inp.late = set()
    ends = produce(settings, inp.records)
    first = Worker(settings, "a", tmp_path)
    try:
        def all_received() -> bool:
            assert first.alive(), first.tail()
            rows = influx_rows(settings, "SELECT count(seq) FROM readings")
            return bool(rows) and int(rows[0]["count"]) == len(inp.unique)

        wait_until(all_received, 60, "every reading written on receipt", interval=0.2)
        with Ledger(settings.ledger_path) as ledger:
            assert ledger.log_size() == 0, "a window sealed before the kill"
    finally:
        first.kill(signal.SIGKILL)
    # Worker B, same windows, quick idle seal: replays every record, rewrites, seals.
    second = Worker(settings.with_overrides(idle_seal_seconds=1.0), "b", tmp_path)
    try:
        wait_until(lambda: all_done(settings, ends), 90, "the replay to seal everything",
                   interval=0.3)
    finally:
        second.kill(signal.SIGTERM)
    headers = check_sealed(settings, inp)  # exactly once, leaves, windows and roots
    rows = influx_rows(settings, "SELECT seq, device_id FROM readings")
    doubled = [k for k, n in Counter((r["device_id"], r["seq"]) for r in rows).items() if n > 1]
    assert not doubled and len(rows) == len(inp.unique)
    assert "received_written=" in second.log_path.read_text()
    print(f"{len(inp.unique)} readings received by the killed worker, sealed once after the "
          f"replay in {len(headers)} windows")


def test_audit_with_received_readings_names_exactly_the_tampering(isolated: Settings,
                                                                  tmp_path: Path) -> None:
    """A live range: sealed windows plus open ones whose readings are stored on receipt.  The
    audit names the altered, the deleted and the inserted reading, and nothing else; the
    received ones are counted, not judged (neither vouched for nor called inserted)."""
    settings = stream_settings(isolated.with_overrides(state_dir=tmp_path), 2.0, 120.0)
    inp = make_input(devices=4, seconds=8)
    produce(settings, inp.records)
    worker = Worker(settings, "a", tmp_path)
    try:
        def settled() -> bool:
            assert worker.alive(), worker.tail()
            rows = influx_rows(settings, "SELECT count(seq) FROM readings")
            with Ledger(settings.ledger_path) as ledger:
                return (bool(rows) and int(rows[0]["count"]) == len(inp.unique)
                        and ledger.log_size() >= 2)

        wait_until(settled, 60, "sealed windows and every reading stored", interval=0.3)
        with Ledger(settings.ledger_path) as ledger:
            where = {key: ledger.locate(*key) for key in sorted(inp.unique)}
            first_window = next(iter(ledger.windows(topic=settings.raw_topic))).window_id
        sealed = [key for key, loc in where.items() if loc is not None]
        received = [key for key, loc in where.items() if loc is None]
        assert len(sealed) >= 2 and received, (len(sealed), len(received))
        (a_dev, a_seq), (d_dev, d_seq) = sealed[0], sealed[-1]
        alter(settings, a_dev, a_seq, hr=inp.unique[(a_dev, a_seq)]["vitals"]["hr"] + 1)
        deleted = inp.unique[(d_dev, d_seq)]
        influx_rows(settings, f"DELETE FROM readings WHERE device_id = '{d_dev}' AND time = "
                              f"{point_time_ns(deleted['ts_us'], d_seq)}")
        insert(settings, "dev-forged", 7, T0 + 3 * SECOND, first_window, VITALS,
               patient="pat-dev-forged")
        report = asyncio.run(run_audit(settings, T0 - SECOND, T0 + 600 * SECOND, settle_s=1.0))
    finally:
        worker.kill(signal.SIGTERM)
    found = sorted((f.kind, f.reading_id) for f in report.readings)
    assert found == sorted([("altered", f"{a_dev}#{a_seq}"), ("deleted", f"{d_dev}#{d_seq}"),
                            ("inserted", "dev-forged#7")]), report.to_text()
    assert report.readings_received == len(received), report.to_text()
    assert report.verdict == "findings" and not report.windows, report.to_text()
    assert f"not judged: {len(received)} readings" in report.to_text()


@pytest.mark.parametrize("seconds", ["0", "-0.1", "11", "nan", "often"])
def test_bad_receipt_flush_setting_is_refused(seconds: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """How long a taken reading may wait before InfluxDB holds it is bounded both ways: 0 would
    spin the writer, and more than 10 s is no longer "before its window seals"."""
    from vitalchain.config import ConfigError, load_settings

    monkeypatch.setenv("VITALCHAIN_RECEIPT_FLUSH_SECONDS", seconds)
    with pytest.raises(ConfigError, match="RECEIPT_FLUSH_SECONDS"):
        load_settings()
