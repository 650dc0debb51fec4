"""The bridge's validator: every reason code, batch policy, fuzzing, agreement with the schema."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitalchain.core.payload.limits import MAX_JSON_INT, MIN_TS_US, VITAL_LIMITS
from vitalchain.core.payload.schema import message_problems
from vitalchain.core.payload.validation import REASONS, Outcome, Rejection, check_reading, validate

NOW_US = 1_760_000_000_000_000
LIMITS = dict(max_payload_bytes=65536, max_future_seconds=300.0)


def reading(device: str = "dev-1", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"device_id": device, "patient_id": "pat-1", "seq": 7,
                            "ts_us": NOW_US - 1000,
                            "vitals": {"hr": 72, "spo2": 98, "rr": 14, "temp_c": 36.6,
                                       "sys": 120, "dia": 80}}
    for key, value in changes.items():
        if key in base["vitals"]:
            base["vitals"][key] = value
        else:
            base[key] = value
    return base


def run(payload: bytes | dict | list, topic: str = "vitals/dev-1", **limits: Any) -> Outcome:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return validate(topic, raw, NOW_US, **{**LIMITS, **limits})


def only_rejection(outcome: Outcome) -> Rejection:
    assert outcome.readings == []
    assert len(outcome.rejections) == 1, outcome.rejections
    return outcome.rejections[0]


def test_valid_reading_and_batch_are_accepted_unchanged() -> None:
    one = reading()
    assert run(one).readings == [one] and run(one).rejections == []
    batch = [reading(seq=i) for i in range(100)]
    outcome = run({"readings": batch})
    assert outcome.readings == batch and outcome.rejections == []
    assert outcome.device_id == "dev-1"
    assert run(reading(temp_c=37)).readings  # an integral temperature is still a number


@pytest.mark.parametrize(("payload", "reason", "detail_has"), [
    (b"{not json", "malformed_json", "invalid JSON"),
    (b"\xff\xfe{}", "malformed_json", "UTF-8"),
    (b'{"a": NaN}', "malformed_json", "NaN"),
    (b'{"device_id": "a", "device_id": "b"}', "malformed_json", "duplicate key 'device_id'"),
    (b"[" * 30000 + b"]" * 30000, "malformed_json", ""),
    (b"[1, 2]", "not_an_object", "list"),
    (b'"text"', "not_an_object", "str"),
    ({k: v for k, v in reading().items() if k != "seq"}, "schema", "missing field seq"),
    (reading(extra=1), "schema", "unexpected field extra"),
    (reading(seq="7"), "schema", "seq must be an integer"),
    (reading(seq=True), "schema", "seq must be an integer"),
    (reading(hr=72.0), "schema", "vitals.hr must be an integer"),
    (reading(temp_c="36.6"), "schema", "vitals.temp_c must be a number"),
    (reading(vitals={"hr": 1}), "schema", "missing field vitals.spo2"),
    (reading(patient_id="p\n"), "schema", "patient_id"),
    (reading(device_id=""), "schema", "device_id"),
    (reading(hr=301), "out_of_range", "vitals.hr=301 outside limit 20..300"),
    (reading(spo2=49), "out_of_range", "vitals.spo2=49"),
    (reading(temp_c=45.01), "out_of_range", "vitals.temp_c=45.01"),
    # An integer beyond a double's range: refused, not an OverflowError out of validate (which
    # stopped the bridge's thread, and the redelivered message would stop it again).
    (reading(temp_c=10**400), "out_of_range", "vitals.temp_c=1000"),
    ({"readings": [reading(seq=1, temp_c=-10**400)]}, "out_of_range",
     "readings[0]: vitals.temp_c=-1000"),
    (reading(sys=120, dia=120), "out_of_range", "vitals.dia=120 must be below vitals.sys=120"),
    (reading(seq=-1), "out_of_range", "seq=-1"),
    (reading(ts_us=1_000), "out_of_range", "ts_us=1000"),
    (reading(device="dev-2"), "device_mismatch", "'dev-2'"),
    (reading(ts_us=NOW_US + 301_000_000), "future_timestamp", "301.0s ahead"),
    ({"readings": []}, "batch_empty", ""),
    ({"readings": [reading(seq=i) for i in range(101)]}, "batch_too_large", "101"),
    ({"readings": [reading(), reading("dev-2")]}, "batch_mixed_devices", "dev-2"),
    ({"readings": reading()}, "schema", "readings must be an array"),
    ({"readings": [reading()], "x": 1}, "schema", "unexpected field x"),
])
def test_each_reason_code(payload: Any, reason: str, detail_has: str) -> None:
    rejection = only_rejection(run(payload))
    assert rejection.reason == reason, rejection
    assert detail_has in rejection.detail


def test_oversized_is_not_parsed_and_bad_topic() -> None:
    assert only_rejection(run(b"x" * 101, max_payload_bytes=100)).reason == "oversized"
    assert run(b"x" * 100, max_payload_bytes=100).rejections[0].reason == "malformed_json"
    for topic in ("vitals/", "vitals/a/b", "other/dev-1", "vitals/dev-1\n", "vitals/-x"):
        outcome = run(reading(), topic=topic)
        assert only_rejection(outcome).reason == "bad_topic"
        assert outcome.device_id is None


def test_future_limit_is_inclusive_of_the_allowance() -> None:
    assert run(reading(ts_us=NOW_US + 300_000_000)).readings
    assert only_rejection(run(reading(ts_us=NOW_US + 300_000_001))).reason == "future_timestamp"


def test_batch_forwards_good_readings_and_rejects_bad_ones_by_index() -> None:
    batch = [reading(seq=0), reading(seq=1, hr=5), reading(seq=2), reading(seq=3, extra=True),
             reading(seq=4, ts_us=NOW_US + 10**9)]
    outcome = run({"readings": batch})
    assert outcome.readings == [batch[0], batch[2]]
    assert [(r.reason, r.index) for r in outcome.rejections] == [
        ("out_of_range", 1), ("schema", 3), ("future_timestamp", 4)]
    assert outcome.rejections[0].detail.startswith("readings[1]: vitals.hr=5")


def test_reason_table_is_complete() -> None:
    with pytest.raises(ValueError):
        Rejection("nonsense", "x")
    assert set(REASONS) == {
        "malformed_json", "not_an_object", "schema", "out_of_range", "device_mismatch",
        "future_timestamp", "oversized", "bad_topic", "batch_mixed_devices", "batch_too_large",
        "batch_empty", "rate_limited", "bad_signature"}


# --- generated samples ----------------------------------------------------------------------
ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


@st.composite
def valid_readings(draw: st.DrawFn) -> dict[str, Any]:
    vitals: dict[str, Any] = {}
    for name, (low, high) in VITAL_LIMITS.items():
        if name == "temp_c":
            vitals[name] = draw(st.floats(low, high) | st.integers(int(low), int(high)))
        else:
            vitals[name] = draw(st.integers(int(low), int(high)))
    if vitals["dia"] >= vitals["sys"]:
        vitals["sys"], vitals["dia"] = VITAL_LIMITS["sys"][1], VITAL_LIMITS["dia"][0]
    return {"device_id": draw(ids), "patient_id": draw(ids),
            "seq": draw(st.integers(0, MAX_JSON_INT)),
            "ts_us": draw(st.integers(MIN_TS_US, NOW_US)), "vitals": vitals}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20)


@st.composite
def mutated_readings(draw: st.DrawFn) -> dict[str, Any]:
    """A valid reading with a few random edits: near misses are where validators disagree."""
    doc = copy.deepcopy(draw(valid_readings()))
    for _ in range(draw(st.integers(0, 3))):
        vitals = doc.get("vitals")
        target = vitals if isinstance(vitals, dict) and draw(st.booleans()) else doc
        # Earlier drops may have emptied the target: then only a new key can be edited.
        keys = st.sampled_from(sorted(target)) | st.text(max_size=5) if target else st.text(max_size=5)
        key = draw(keys)
        action = draw(st.sampled_from(["drop", "set", "edge"]))
        if action == "drop":
            target.pop(key, None)
        elif action == "set":
            target[key] = draw(json_values)
        else:
            target[key] = draw(st.sampled_from([
                -1, 0, 19, 20, 49, 50, 100, 101, 300, 301, 24.9, 25, 45.0, 45.1, 200, 201,
                MIN_TS_US - 1, MAX_JSON_INT, MAX_JSON_INT + 1, 72.0, True, "72", "a\n", "",
                float("inf")]))
    return doc


def _integral_float_in_integer_field(doc: Any) -> bool:
    """JSON Schema's "integer" admits 72.0; the bridge deliberately does not."""
    if not isinstance(doc, dict):
        return False
    fields = [doc.get("seq"), doc.get("ts_us")]
    if isinstance(doc.get("vitals"), dict):
        fields += [v for k, v in doc["vitals"].items() if k != "temp_c"]
    return any(type(v) is float for v in fields)


def _accepted(doc: Any) -> bool:
    try:
        check_reading(doc)
    except Exception as exc:
        assert type(exc).__name__ == "_Reject", exc
        return False
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_readings())
def test_validator_agrees_with_json_schema(doc: dict[str, Any]) -> None:
    try:
        json.dumps(doc, allow_nan=False)
    except ValueError:
        assert not _accepted(doc)  # infinity cannot even be sent as JSON
        return
    schema_ok = not message_problems(doc)
    mine = _accepted(doc)
    if mine:
        assert schema_ok, (doc, message_problems(doc))
    elif schema_ok:
        assert _integral_float_in_integer_field(doc), doc


@settings(max_examples=200)
@given(valid_readings())
def test_generated_valid_readings_are_accepted(doc: dict[str, Any]) -> None:
    assert not message_problems(doc)
    topic = f"vitals/{doc['device_id']}"
    assert run(doc, topic=topic).readings == [doc]
    assert run({"readings": [doc, doc]}, topic=topic).readings == [doc, doc]


@settings(max_examples=300)
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()),
       st.sampled_from(["vitals/dev-1", "vitals/x", "bad", ""]))
def test_fuzz_never_raises(payload: bytes, topic: str) -> None:
    outcome = validate(topic, payload, NOW_US, **LIMITS)
    assert outcome.readings or outcome.rejections
    for rejection in outcome.rejections:
        assert rejection.reason in REASONS and rejection.detail
