"""The tamper audit on real InfluxDB, ledger and anvil: each tampering is named, and only it."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.audit_support import (
    T0,
    World,
    build_world,
    influx_query,
    influx_write,
    stored_leaf_field,
)
from vitalchain.audit.engine import run_audit
from vitalchain.audit.report import AuditReport, GapFinding
from vitalchain.config import Settings
from vitalchain.core.integrity import canonical_reading, reading_leaf_hash
from vitalchain.storage.influx import Point, quote_string
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.readings import point_time_ns, reading_point, window_point

pytestmark = pytest.mark.e2e


def audit(world: World, **kwargs: Any) -> AuditReport:
    return asyncio.run(run_audit(world.settings, T0, world.end_us, **kwargs))


def summary(report: AuditReport) -> dict[str, list]:
    return {
        "readings": sorted((f.kind, f.reading_id) for f in report.readings),
        "windows": sorted((f.kind, f.window_id, f.fields) for f in report.windows),
        "checkpoints": sorted((f.kind, f.size) for f in report.checkpoints),
        "gaps": [(g.device_id, g.first_missing, g.last_missing) for g in report.gaps],
    }


NOTHING = {"readings": [], "windows": [], "checkpoints": [], "gaps": []}


@pytest.fixture
def world(isolated: Settings) -> World:
    return build_world(isolated)


def test_clean_state_has_no_findings(world: World) -> None:
    seen: list[tuple[int, int]] = []
    report = audit(world, progress=lambda done, total: seen.append((done, total)))
    assert summary(report) == NOTHING, report.to_text()
    assert report.ok and report.chain_checked
    assert report.windows_checked == 4 and report.readings_checked == 36
    assert report.checkpoints_checked == 2
    assert seen[-1] == (4, 4) and len(seen) == 4


def test_altered_value_is_named(world: World) -> None:
    original = world.reading("dev-b", 4)
    forged = canonical_reading({**original, "vitals": {**original["vitals"], "hr": 180}}, b"\x11" * 32)
    assert forged["salt"] == original["salt"]
    header = world.header_of("dev-b", 4)
    # the forger even writes a matching leaf field: the audit recomputes, it does not trust it
    influx_write(world.settings, [reading_point(forged, reading_leaf_hash(forged),
                                                header["window_id"], False, original["ts_us"])])
    report = audit(world)
    assert summary(report) == {**NOTHING, "readings": [("altered", "dev-b#4")]}, report.to_text()
    assert report.readings[0].window_id == header["window_id"]


def test_deleted_point_is_named_across_small_chunks(world: World) -> None:
    r = world.reading("dev-c", 7)
    influx_query(world.settings, f"DELETE FROM readings WHERE device_id = {quote_string('dev-c')} "
                                 f"AND time = {point_time_ns(r['ts_us'], r['seq'])}")
    left = influx_query(world.settings, "SELECT count(seq) FROM readings")
    assert left[0]["count"] == 35
    # tiny chunks: deletion must not be confused by windows spanning many chunks
    report = audit(world, target_rows=4, chunk_us=20_000)
    assert summary(report) == {**NOTHING, "readings": [("deleted", "dev-c#7")]}, report.to_text()
    assert report.readings_checked == 35


def test_inserted_point_is_named(world: World) -> None:
    extra = canonical_reading({"device_id": "dev-a", "patient_id": "pat-dev-a", "seq": 500,
                               "ts_us": T0 + 55, "vitals": {"hr": 70, "spo2": 98, "rr": 12,
                                                            "temp_c": 36.5, "sys": 118, "dia": 79}},
                              b"\x11" * 32)
    influx_write(world.settings, [reading_point(extra, reading_leaf_hash(extra), "p0-0", False,
                                                extra["ts_us"])])
    report = audit(world)
    assert summary(report) == {**NOTHING, "readings": [("inserted", "dev-a#500")]}, report.to_text()


def test_rewritten_window_root_is_named(world: World) -> None:
    header = world.headers[2]
    influx_write(world.settings, [window_point({**header, "root": "00" * 32}, 2)])
    report = audit(world)
    assert summary(report) == {**NOTHING, "windows": [("changed", header["window_id"], ("root",))]}, \
        report.to_text()


def test_missing_window_point_is_named(world: World) -> None:
    header = world.headers[1]
    influx_query(world.settings, f"DELETE FROM windows WHERE window_id = {quote_string(header['window_id'])}")
    report = audit(world)
    assert summary(report) == {**NOTHING, "windows": [("missing", header["window_id"], ())]}, \
        report.to_text()


def test_dropped_checkpoint_record_is_named(world: World) -> None:
    db = sqlite3.connect(world.settings.ledger_path)
    with db:
        deleted = db.execute("DELETE FROM anchor_checkpoints WHERE size = 4").rowcount
    db.close()
    assert deleted == 1
    report = audit(world)
    assert summary(report) == {**NOTHING, "checkpoints": [("unrecorded_anchor", 4)]}, report.to_text()
    assert any("not covered" in n for n in report.notes)


def test_sequence_gap_is_named(isolated: Settings) -> None:
    """docs/DEVICES.md allows gaps: the audit names them as information and does not fail."""
    world = build_world(isolated, gap=("dev-a", 4))
    report = audit(world)
    assert summary(report) == {**NOTHING, "gaps": [("dev-a", 4, 4)]}, report.to_text()
    assert report.gaps == [GapFinding("dev-a", 4, 4)]
    assert report.ok and report.verdict == "clean" and report.exit_code == 0, report.to_text()
    assert report.finding_count() == 0
    assert "info: sequence gap dev-a#4 (1 never sealed; gaps are allowed" in report.to_text()
    assert report.to_dict()["counts"]["gaps"] == 1


def test_windows_sealed_while_the_audit_runs_are_not_judged(world: World) -> None:
    """The stream keeps sealing while the audit reads: in the sink's order, readings land in
    InfluxDB (not yet in the ledger) while the readings are scanned, the window is appended and
    its point written before the windows are scanned. None of it is a finding; the report says
    what it did not judge."""
    finish: list = []
    pool = ThreadPoolExecutor(1)  # the progress callback runs on the audit's event loop

    def stream_meanwhile(done: int, total: int) -> None:
        if done == 1:  # window 0 is read; the in-flight readings lie just after it in time
            finish.append(pool.submit(world.begin_seal, 9, received_us=time.time_ns() // 1000,
                                      first_ts_us=T0 + 105_000).result())
        if done == total:  # they were scanned unsealed: now the ledger append and windows point
            pool.submit(finish.pop()).result()

    report = asyncio.run(run_audit(world.settings, T0, world.end_us, target_rows=4,
                                   chunk_us=20_000, progress=stream_meanwhile))
    assert summary(report) == NOTHING, report.to_text()
    assert report.windows_checked == 4 and report.readings_checked == 36
    assert report.windows_after_horizon == 1 and report.readings_after_horizon == 9
    assert report.horizon_log_size == 4 and report.verdict == "clean"
    assert "sealed after it and not judged: 1 windows, 9 readings" in report.to_text()
    # the next audit's horizon includes the window: judged, and clean
    later = asyncio.run(run_audit(world.settings, T0, world.end_us))
    assert summary(later) == NOTHING and later.windows_checked == 5, later.to_text()


def test_a_reading_never_sealed_is_still_inserted_after_the_settle_wait(world: World) -> None:
    """A stored reading that stays unsealed is a finding even if its received_us is recent.

    Readings are stored on receipt, so while the window it names is its partition's open window
    it is counted as received and judged neither way; once that window is sealed without it, it
    is inserted (after the settle wait)."""
    world.begin_seal(3, received_us=time.time_ns() // 1000)  # never appended
    report = audit(world, settle_s=1.0)
    assert summary(report) == NOTHING and report.readings_received == 3, report.to_text()
    assert report.readings_checked == 36 and report.to_dict()["counts"]["readings_received"] == 3
    assert "received, not sealed yet and not judged: 3 readings" in report.to_text()
    world.offset -= 3  # the stream seals that offset range with other readings
    world.begin_seal(3)()
    started = time.monotonic()
    report = audit(world, settle_s=1.0)
    assert time.monotonic() - started >= 1.0  # it waited for the stream before judging
    assert sorted(f.kind for f in report.readings) == ["inserted"] * 3, report.to_text()
    assert report.verdict == "findings" and report.exit_code == 1


def test_a_received_reading_of_an_ended_epoch_is_reported_lost_not_inserted(world: World) -> None:
    """Readings are stored on receipt.  One in the window epoch 0 had open when Kafka restarted
    (past what epoch 0 sealed) can never be sealed: reported with the Kafka losses (the audit
    still fails), while a point naming a window that epoch *sealed* without it is inserted."""
    def point(seq: int, window_id: str) -> Any:
        extra = canonical_reading({"device_id": "dev-a", "patient_id": "pat-dev-a", "seq": seq,
                                   "ts_us": T0 + 50 + seq, "vitals": {
                                       "hr": 70, "spo2": 98, "rr": 12, "temp_c": 36.5,
                                       "sys": 118, "dia": 79}}, b"\x11" * 32)
        return reading_point(extra, reading_leaf_hash(extra), window_id, False, extra["ts_us"])

    influx_write(world.settings, [point(600, "p0-36"), point(601, "p0-0")])
    with Ledger(world.settings.ledger_path) as ledger:
        assert ledger.begin_epoch(world.settings.raw_topic, 0, 0, "broker restarted (test)") == 1
    report = audit(world, settle_s=0.5)
    assert summary(report)["readings"] == [("inserted", "dev-a#601")], report.to_text()
    lost = [(f.device_id, f.first_missing, f.stored, f.from_epoch) for f in report.lost]
    assert lost == [("dev-a", 600, True, 0)], report.to_text()
    assert "stored in InfluxDB on receipt in a window of epoch 0" in report.to_text()
    assert report.verdict == "findings" and report.readings_received == 0


def test_an_empty_range_says_nothing_was_sealed(world: World) -> None:
    """Before T0 nothing is stored: not OK, a verdict of its own (exit 3)."""
    report = asyncio.run(run_audit(world.settings, T0 - 10_000_000, T0 - 1))
    assert summary(report) == NOTHING, report.to_text()
    assert report.windows_checked == report.readings_checked == 0
    assert report.verdict == "nothing_sealed" and report.exit_code == 3 and not report.ok
    assert "NOTHING SEALED in this range" in report.to_text()
    assert "OK" not in report.to_text()
    data = report.to_dict()
    assert data["verdict"] == "nothing_sealed" and data["ok"] is False and data["exit_code"] == 3


def test_range_limits_what_is_checked(world: World) -> None:
    """A reading deleted before ``--from`` is outside the audit: not reported, not counted."""
    first, last = world.readings[0], world.readings[-1]
    influx_query(world.settings, f"DELETE FROM readings WHERE device_id = {quote_string(first['device_id'])} "
                                 f"AND time = {point_time_ns(first['ts_us'], first['seq'])}")
    with Ledger(world.settings.ledger_path) as ledger:
        assert ledger.reading_count() == 36
    report = asyncio.run(run_audit(world.settings, first["ts_us"] + 1, last["ts_us"]))
    assert summary(report) == NOTHING, report.to_text()
    assert report.readings_checked == 35


def test_window_point_of_no_sealed_window_is_named(world: World) -> None:
    fake = {**world.headers[0], "window_id": "p0-999", "first_offset": 999, "last_offset": 1007}
    influx_write(world.settings, [window_point(fake, 17)])
    report = audit(world)
    assert summary(report) == {**NOTHING, "windows": [("unsealed", "p0-999", ())]}, report.to_text()


def test_checkpoint_record_the_chain_does_not_back_is_named(world: World) -> None:
    db = sqlite3.connect(world.settings.ledger_path)
    with db:
        changed = db.execute("UPDATE anchor_checkpoints SET block_number = block_number + 100 "
                             "WHERE size = 2").rowcount
    db.close()
    assert changed == 1
    report = audit(world)
    assert summary(report) == {**NOTHING, "checkpoints": [("not_on_chain", 2)]}, report.to_text()
    assert "recorded block" in report.checkpoints[0].detail


def _stored_row(world: World, device: str, seq: int) -> dict[str, Any]:
    reading = world.reading(device, seq)
    t = point_time_ns(reading["ts_us"], reading["seq"])
    rows = influx_query(world.settings, f"SELECT * FROM readings WHERE device_id = "
                                        f"{quote_string(device)} AND time = {t}")
    assert len(rows) == 1
    return rows[0]


def test_a_row_met_while_being_written_is_read_again_whole(world: World) -> None:
    from vitalchain.audit.engine import reread_rows
    from vitalchain.storage.influx import InfluxClient
    from vitalchain.storage.readings import StoredReadingError, stored_leaf

    whole = _stored_row(world, "dev-b", 4)
    torn = {k: v for k, v in whole.items() if k != "rr"}  # what a scan met mid-write
    with pytest.raises(StoredReadingError):
        stored_leaf(torn)

    async def reread() -> list[dict[str, Any]]:
        async with InfluxClient(world.settings) as client:
            return await reread_rows(client, [torn])

    [again] = asyncio.run(reread())
    assert again == whole
    stored_leaf(again)  # parses: judged as the whole point it is


def test_a_point_stored_without_a_vital_is_still_altered(world: World) -> None:
    whole = _stored_row(world, "dev-a", 3)
    influx_query(world.settings, f"DELETE FROM readings WHERE device_id = {quote_string('dev-a')} "
                                 f"AND time = {whole['time']}")
    reading = world.reading("dev-a", 3)
    header = world.header_of("dev-a", 3)
    full = reading_point(reading, stored_leaf_field(whole), header["window_id"], False,
                         int(whole["received_us"]))
    without_rr = Point(full.measurement, full.tags,
                       {k: v for k, v in full.fields.items() if k != "rr"}, full.time_ns)
    influx_write(world.settings, [without_rr])
    report = audit(world)
    assert summary(report)["readings"] == [("altered", "dev-a#3")], report.to_text()
    assert "lacks vital 'rr'" in report.to_text()
