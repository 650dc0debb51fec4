"""The JSON Schema of a device message, generated from ``vitalchain.core.payload.limits``.

``reading.schema.json`` in this package is the published contract (firmware authors and the bridge
read it); ``build_schema()`` is how it is made, and a test fails if the two ever differ. Regenerate
with ``vitalchain devices schema > vitalchain/core/payload/reading.schema.json``. JSON Schema
cannot compare two fields or two array items, so ``message_problems`` adds the two cross-field
rules: ``dia < sys`` and one device per batch.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

from vitalchain.core.payload.limits import (
    DECIMAL_VITALS,
    ID_PATTERN,
    MAX_BATCH,
    MAX_JSON_INT,
    MIN_BATCH,
    MIN_TS_US,
    VITAL_LIMITS,
    vital_violations,
)

SCHEMA_FILE = "reading.schema.json"
_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))
SCHEMA_ID = "https://vitalchain.invalid/schemas/device-message.json"


def build_schema() -> dict[str, Any]:
    vitals = {
        name: {"type": "number" if name in DECIMAL_VITALS else "integer",
               "minimum": low, "maximum": high}
        for name, (low, high) in VITAL_LIMITS.items()
    }
    reading = {
        "type": "object",
        "additionalProperties": False,
        "required": ["device_id", "patient_id", "seq", "ts_us", "vitals"],
        "properties": {
            "device_id": {"type": "string", "pattern": ID_PATTERN},
            "patient_id": {"type": "string", "pattern": ID_PATTERN},
            "seq": {"type": "integer", "minimum": 0, "maximum": MAX_JSON_INT},
            "ts_us": {"type": "integer", "minimum": MIN_TS_US, "maximum": MAX_JSON_INT},
            "vitals": {
                "type": "object",
                "additionalProperties": False,
                "required": list(VITAL_LIMITS),
                "properties": vitals,
            },
        },
    }
    batch = {
        "type": "object",
        "additionalProperties": False,
        "required": ["readings"],
        "properties": {
            "readings": {"type": "array", "minItems": MIN_BATCH, "maxItems": MAX_BATCH,
                         "items": {"$ref": "#/$defs/reading"}},
        },
    }
    signed = {
        "type": "object",
        "additionalProperties": False,
        "required": ["key_id", "sig", "readings"],
        "properties": {
            "key_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "sig": {"type": "string", "pattern": "^[A-Za-z0-9_-]{86}$"},
            "readings": batch["properties"]["readings"],
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "vitalchain device message",
        "description": (
            "One reading, or a batch {\"readings\": [...]} of 1..100 readings of one device, "
            "or a signed batch {\"key_id\", \"sig\", \"readings\"} (Ed25519 over "
            "JCS({\"key_id\", \"readings\"}), base64url; required unless "
            "VITALCHAIN_DEVICE_SIGNATURES=optional), "
            "published with QoS 1 to vitals/<device_id>. Not expressible here and checked "
            "by the bridge too: the signature verifies with the device's registered, unrevoked "
            "key; vitals.dia < vitals.sys; every reading's device_id equals the "
            "topic's device id; ts_us at most VITALCHAIN_MAX_FUTURE_SECONDS ahead of the "
            "bridge's clock; the payload at most VITALCHAIN_MAX_PAYLOAD_BYTES bytes."),
        "oneOf": [{"$ref": "#/$defs/reading"}, {"$ref": "#/$defs/batch"},
                  {"$ref": "#/$defs/signed"}],
        "$defs": {"reading": reading, "batch": batch, "signed": signed},
    }


def schema_text() -> str:
    return json.dumps(build_schema(), indent=2) + "\n"


@cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    schema = build_schema()  # the same document as the published file (a test compares them)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def message_problems(message: Any, device_id: str | None = None) -> list[str]:
    """Every reason ``message`` (decoded JSON) is not a valid device message; empty if valid.

    ``device_id`` is the id taken from the MQTT topic; when given, every reading must carry it.
    """
    errors = sorted(_validator().iter_errors(message), key=lambda e: list(e.absolute_path))
    if errors:
        return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in errors[:5]]
    readings = message.get("readings", [message])
    problems: list[str] = []
    # Python's ``$`` also matches before a final newline; JSON Schema's (ECMA 262) does not.
    problems += [f"id {value!r} has a trailing newline" for r in readings
                 for value in (r["device_id"], r["patient_id"]) if not _ID.fullmatch(value)]
    owners = {r["device_id"] for r in readings}
    if len(owners) > 1:
        problems.append(f"batch mixes devices {sorted(owners)}")
    if device_id is not None and owners != {device_id}:
        problems.append(f"reading device_id {sorted(owners)} does not match topic's {device_id!r}")
    for index, reading in enumerate(readings):
        problems += [f"readings/{index}/vitals: {p}" for p in vital_violations(reading["vitals"])]
    return problems

