"""The dead-letter archiver on the real Kafka and InfluxDB, and the rejects through the API."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from tests.api_support import seed, served
from tests.audit_support import influx_query
from tests.common_support import wait_until
from tests.stream_support import producer
from vitalchain.app.pipeline import Pipeline
from vitalchain.config import Settings
from vitalchain.core.payload.validation import Rejection
from vitalchain.ingest.deadletter import dead_letter_value
from vitalchain.ingest.deadletters import MAX_PAYLOAD_BYTES, Archiver, rejected_point


def produce_rejects(settings: Settings, now_us: int) -> None:
    records = [
        (b"dev-a_1", dead_letter_value(Rejection("schema", "vitals.hr: 900 > 300"), "vitals/dev-a_1",
                                       b'{"hr": 900}', now_us - 2_000_000)),
        (b"dev-b", dead_letter_value(Rejection("malformed_json", "not JSON"), "vitals/dev-b",
                                     b"\xff" * (MAX_PAYLOAD_BYTES + 10), now_us - 1_000_000)),
        (b"", b"garbage that is not a dead-letter record"),
    ]
    p = producer(settings)
    for key, value in records:
        p.send(settings.dlq_topic, key=key, value=value).get(timeout=10)
    p.close()


def count_rejected(settings: Settings) -> int:
    rows = influx_query(settings, 'SELECT count("received_us") FROM "rejected"')
    return int(rows[0]["count"]) if rows else 0


def test_point_is_deterministic_and_bounded() -> None:
    value = dead_letter_value(Rejection("oversized", "x" * 5000), "vitals/d1", b"a" * 10_000, 1_000)
    one, two = rejected_point(b"d1", value, 5), rejected_point(b"d1", value, 6)
    assert one == two and 1_000_000 <= one.time_ns < 1_001_000
    assert one.fields["payload_size"] == 10_000 and one.fields["payload_truncated"] is True
    assert len(base64.b64decode(one.fields["payload_b64"])) == MAX_PAYLOAD_BYTES
    assert len(one.fields["detail"]) == 1000 and one.tags == {"device_id": "d1", "reason": "oversized",
                                                               "stage": "bridge"}
    hostile = rejected_point(b"bad id ' OR 1=1", json.dumps({"reason": "x y", "received_us": -5}).encode(), 7)
    assert "device_id" not in hostile.tags and hostile.tags["reason"] == "unknown"
    assert hostile.time_ns // 1000 == 7


@pytest.mark.e2e
def test_rejects_are_archived_once_and_served_to_the_right_roles(isolated: Settings,
                                                                 tmp_path: Path) -> None:
    settings = isolated.with_overrides(state_dir=tmp_path)
    world = seed(settings, tmp_path / "api.sqlite")
    produce_rejects(settings, world.now_us)
    with Pipeline(settings) as pipeline:  # the real `vitalchain deadletters run`
        pipeline.start("deadletters")
        wait_until(lambda: pipeline.check_alive() or count_rejected(settings) == 3, 60,
                   "the archiver to write 3 rejected points")
    # A replay (the topic read again from the start) writes the same points again.
    replay = Archiver(settings, group_id=None)
    try:
        wait_until(lambda: replay.poll_once() or replay.archived >= 3, 30, "the replay")
    finally:
        replay.close()
    assert replay.archived == 3 and count_rejected(settings) == 3

    with served(settings, world.store_path) as base:
        def get(who: str | None, path: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {world.tokens[who]}"} if who else {}
            return httpx.get(base + path, headers=headers)

        r = get("alice", "/clinician/patients/pat-a/rejected")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["devices"] == ["dev-a_1", "dev-a_2"]
        assert [(x["device_id"], x["reason"]) for x in body["rejected"]] == [("dev-a_1", "schema")]
        assert base64.b64decode(body["rejected"][0]["payload_b64"]) == b'{"hr": 900}'
        assert body["rejected"][0]["received_us"] == world.now_us - 2_000_000
        assert get("bob", "/clinician/patients/pat-a/rejected").status_code == 403
        assert get("alice", "/clinician/patients/pat-b/rejected").status_code == 403
        assert get("audrey", "/clinician/patients/pat-a/rejected").status_code == 403
        assert get(None, "/audit/rejected").status_code == 401
        assert get("alice", "/audit/rejected").status_code == 403
        r = get("audrey", "/audit/rejected")
        assert r.status_code == 200, r.text
        rows = r.json()["rejected"]
        assert sorted((x["device_id"] or "", x["reason"]) for x in rows) == \
            [("", "unreadable_dead_letter"), ("dev-a_1", "schema"), ("dev-b", "malformed_json")]
        big = next(x for x in rows if x["reason"] == "malformed_json")
        assert big["payload_truncated"] and big["payload_size"] == MAX_PAYLOAD_BYTES + 10
        r = get("audrey", "/audit/rejected?device=dev-b")
        assert [x["reason"] for x in r.json()["rejected"]] == ["malformed_json"]
