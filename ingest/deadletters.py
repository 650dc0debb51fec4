"""The dead-letter archiver: rejected messages out of Kafka into InfluxDB measurement ``rejected``.

tansu keeps the dead-letter topic in memory only, so a reject that nobody archived is gone at the
next broker restart; clinicians and auditors also need to see *that* a device's readings were
refused, and why. The archiver consumes ``settings.dlq_topic`` in a consumer group and commits
offsets only after InfluxDB acknowledged the write, so a crash replays records rather than losing
them. Replays (and the bridge's own at-least-once duplicates) are harmless: a point's timestamp is
``received_us * 1000`` plus a tiebreak derived from the record's bytes, so the same record always
lands on the same point and InfluxDB overwrites it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blake3 import blake3

from vitalchain.config import Settings
from vitalchain.storage.influx import InfluxClient, InfluxError, Point

REJECTED_MEASUREMENT = "rejected"
GROUP_ID = "vitalchain-deadletters"
MAX_PAYLOAD_BYTES = 4096  # original payload kept (base64) up to this many bytes
MAX_DETAIL_CHARS = 1000
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CODE = re.compile(r"^[a-z0-9_.-]{1,64}$")
_MAX_US = (2**63 - 1) // 1000 - 1000

CLOSE_TIMEOUT_MS = 2000
log = logging.getLogger("vitalchain.deadletters")


def _code(value: Any, default: str) -> str:
    return value if isinstance(value, str) and _CODE.fullmatch(value) else default


def tiebreak(value: bytes) -> int:
    """0..999 from the record's bytes: same record, same point; different records rarely collide."""
    return int.from_bytes(blake3(value).digest()[:4], "big") % 1000


def rejected_point(key: bytes | None, value: bytes, fallback_us: int) -> Point:
    """The ``rejected`` point of one dead-letter record, whatever shape the record has.

    A record that is not the bridge's JSON is archived too (reason ``unreadable_dead_letter``,
    its raw bytes as payload): the archiver must never drop or choke on what it is given.
    """
    try:
        record = json.loads(value)
        if not isinstance(record, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError):
        record = {"reason": "unreadable_dead_letter", "detail": "dead-letter record is not a JSON object",
                  "payload_b64": base64.b64encode(value).decode("ascii"), "stage": "deadletters"}
    try:
        payload = base64.b64decode(str(record.get("payload_b64", "")), validate=True)
    except (binascii.Error, ValueError):
        payload = b""
    received = record.get("received_us")
    received_us = received if isinstance(received, int) and 0 <= received <= _MAX_US else fallback_us
    device = (key or b"").decode("utf-8", "replace")
    tags = {"reason": _code(record.get("reason"), "unknown"),
            "stage": _code(record.get("stage"), "unknown")}
    if _ID.fullmatch(device):
        tags["device_id"] = device
    detail = record.get("detail")
    fields: dict[str, Any] = {
        "detail": (detail if isinstance(detail, str) else "")[:MAX_DETAIL_CHARS],
        "payload_b64": base64.b64encode(payload[:MAX_PAYLOAD_BYTES]).decode("ascii"),
        "payload_size": len(payload),
        "payload_truncated": len(payload) > MAX_PAYLOAD_BYTES,
        "topic": str(record.get("topic", ""))[:256],
        "received_us": received_us,
    }
    return Point(REJECTED_MEASUREMENT, tags, fields, received_us * 1000 + tiebreak(value))


@dataclass
class Archiver:
    """Consumes the dead-letter topic; ``poll_once`` is one poll → write → commit round."""

    settings: Settings
    group_id: str | None = GROUP_ID  # None: a replay from the start, nothing committed
    now_us: Callable[[], int] | None = None

    def __post_init__(self) -> None:
        from kafka import KafkaConsumer

        self.archived = 0
        self._consumer = KafkaConsumer(
            self.settings.dlq_topic, bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            client_id="vitalchain-deadletters", metadata_max_age_ms=5000)
        self._loop = asyncio.new_event_loop()
        self._influx = InfluxClient(self.settings, retries=5)

    def poll_once(self, timeout_ms: int = 1000) -> int:
        """Archive what one poll returns; offsets are committed only after InfluxDB took it."""
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=1000)
        records = [r for batch in batches.values() for r in batch]
        if not records:
            return 0
        fallback = (self.now_us or (lambda: time.time_ns() // 1000))()
        points = [rejected_point(r.key, r.value or b"", r.timestamp * 1000 if r.timestamp and r.timestamp > 0
                                 else fallback) for r in records]
        self._loop.run_until_complete(self._influx.write(points))
        if self.group_id is not None:
            self._consumer.commit()
        self.archived += len(points)
        return len(points)

    def rewind(self) -> None:
        """Back to the committed offsets, so records whose write failed are polled again."""
        for tp in self._consumer.assignment():
            self._consumer.seek(tp, self._consumer.committed(tp) or 0)

    def close(self) -> None:
        try:
            # Bounded: kafka-python waits request_timeout_ms for the LeaveGroup answer, which
            # tansu keeps it waiting for (stop took 20 s); unanswered, the session just expires.
            self._consumer.close(autocommit=False, timeout_ms=CLOSE_TIMEOUT_MS)
        finally:
            self._loop.run_until_complete(self._influx.close())
            self._loop.close()


def run(settings: Settings, stop: Callable[[], bool] = lambda: False,
        progress_seconds: float = 10.0) -> None:
    """Archive until ``stop()``; InfluxDB errors are retried (nothing is committed meanwhile)."""
    archiver = Archiver(settings)
    last = time.monotonic()
    try:
        while not stop():
            try:
                archiver.poll_once()
            except InfluxError as exc:
                log.warning("InfluxDB write failed, retrying: %s", exc)
                archiver.rewind()
                time.sleep(1.0)
            if time.monotonic() - last >= progress_seconds:
                log.warning("deadletters archived=%d", archiver.archived)
                last = time.monotonic()
    finally:
        archiver.close()
