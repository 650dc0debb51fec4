"""Dead-letter records: what a rejected message looks like on ``settings.dlq_topic``.

The record keeps the original bytes (base64) so an operator can replay or inspect exactly what the
device sent, whatever its encoding; the reason code (see ``vitalchain.core.payload.validation.REASONS``) is stable
for alerting, the detail is for humans.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from vitalchain.core.payload.validation import Rejection

STAGE = "bridge"


def dead_letter_key(device_id: str | None) -> bytes:
    """The topic's device id (so a device's rejects stay together), or empty when unknown."""
    return device_id.encode() if device_id else b""


def dead_letter_record(dlq_topic: str, device_id: str | None, rejection: Rejection, topic: str,
                       payload: bytes, received_us: int) -> tuple[str, bytes, bytes]:
    """(Kafka topic, key, value) of the dead-letter record for one rejection."""
    return (dlq_topic, dead_letter_key(device_id),
            dead_letter_value(rejection, topic, payload, received_us))


def dead_letter_value(rejection: Rejection, topic: str, payload: bytes, received_us: int) -> bytes:
    record: dict[str, Any] = {
        "reason": rejection.reason,
        "detail": rejection.detail,
        "topic": topic,
        "payload_b64": base64.b64encode(payload).decode("ascii"),
        "received_us": received_us,
        "stage": STAGE,
    }
    return json.dumps(record, separators=(",", ":")).encode()

