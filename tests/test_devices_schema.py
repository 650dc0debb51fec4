"""The published device-message schema: generated from the limits, strict, and cross-checked."""

from __future__ import annotations

import copy
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

import vitalchain.core.payload as payload
from vitalchain.core.payload.limits import MAX_BATCH, VITAL_LIMITS
from vitalchain.core.payload.schema import SCHEMA_FILE, build_schema, message_problems
from vitalchain.devices.physiology import Patient


def reading(seq: int = 0, device: str = "wearable-00001", **vitals: Any) -> dict[str, Any]:
    values = {"hr": 72, "spo2": 98, "rr": 14, "temp_c": 36.6, "sys": 120, "dia": 80, **vitals}
    return {"device_id": device, "patient_id": "patient-0a1b2c3d4e", "seq": seq,
            "ts_us": time.time_ns() // 1000, "vitals": values}


def test_schema_file_is_generated_from_limits() -> None:
    on_disk = json.loads((Path(payload.__file__).parent / SCHEMA_FILE).read_text())
    assert on_disk == build_schema(), (
        "regenerate: vitalchain devices schema > vitalchain/core/payload/reading.schema.json")
    packaged = json.loads(resources.files("vitalchain.core.payload").joinpath(SCHEMA_FILE).read_text())
    assert packaged == on_disk
    bounds = on_disk["$defs"]["reading"]["properties"]["vitals"]["properties"]
    assert {k: (v["minimum"], v["maximum"]) for k, v in bounds.items()} == VITAL_LIMITS


def test_valid_single_and_batch() -> None:
    assert message_problems(reading()) == []
    assert message_problems(reading(), device_id="wearable-00001") == []
    assert message_problems({"readings": [reading(i) for i in range(MAX_BATCH)]}) == []
    edges = {name: {"low": low, "high": high} for name, (low, high) in VITAL_LIMITS.items()}
    assert message_problems(reading(hr=edges["hr"]["low"], sys=40, dia=20)) == []
    assert message_problems(reading(temp_c=45.0, spo2=100, rr=80, hr=300)) == []


def mutate(path: list[str], value: Any) -> dict[str, Any]:
    message = reading()
    target = message
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return message


BAD = {
    "extra top-level field": mutate(["note"], "x"),
    "extra vital": mutate(["vitals", "glucose"], 5),
    "missing vital": mutate(["vitals", "rr"], KeyError),
    "missing seq": mutate(["seq"], KeyError),
    "negative seq": mutate(["seq"], -1),
    "float seq": mutate(["seq"], 1.5),
    "string seq": mutate(["seq"], "1"),
    "bool hr": mutate(["vitals", "hr"], True),
    "float hr": mutate(["vitals", "hr"], 72.5),
    "hr too low": mutate(["vitals", "hr"], 19),
    "hr too high": mutate(["vitals", "hr"], 301),
    "spo2 over 100": mutate(["vitals", "spo2"], 101),
    "rr too low": mutate(["vitals", "rr"], 1),
    "temp too high": mutate(["vitals", "temp_c"], 45.1),
    "temp as string": mutate(["vitals", "temp_c"], "36.6"),
    "sys too high": mutate(["vitals", "sys"], 301),
    "dia too low": mutate(["vitals", "dia"], 19),
    "dia not below sys": mutate(["vitals", "dia"], 120),
    "ts in milliseconds": mutate(["ts_us"], time.time_ns() // 1_000_000),
    "device id with slash": mutate(["device_id"], "a/b"),
    "device id trailing newline": mutate(["device_id"], "wearable-00001\n"),
    "empty patient": mutate(["patient_id"], ""),
    "not an object": [reading()],
    "empty batch": {"readings": []},
    "batch too big": {"readings": [reading(i) for i in range(MAX_BATCH + 1)]},
    "batch with extra field": {"readings": [reading()], "device_id": "wearable-00001"},
    "batch mixing devices": {"readings": [reading(0), reading(1, device="wearable-00002")]},
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_invalid_messages_are_refused(name: str) -> None:
    assert message_problems(copy.deepcopy(BAD[name])), f"{name} was accepted"


def test_device_must_match_topic() -> None:
    problems = message_problems(reading(), device_id="wearable-00002")
    assert problems and "topic" in problems[0]


def test_simulated_readings_validate() -> None:
    patient = Patient("patient-x", seed=3, episodes_per_hour=30)
    batch = [dict(reading(i), vitals=patient.sample(1.0)) for i in range(MAX_BATCH)]
    assert message_problems({"readings": batch}) == []
