"""The canonicalisation fast path writes exactly what ``rfc8785`` writes, on every input.

Readings and window headers across the whole schema domain (any valid id, any float temperature in
range, any safe integer), and arbitrary JSON (unicode, escapes, floats of every magnitude) where the
fast path must step aside to the general one.
"""

from __future__ import annotations

import math

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalchain.core.integrity import (
    CanonicalError,
    blake3_hasher,
    build_window_header,
    canonical_json,
    canonical_reading,
    reading_leaf_hash,
)
from vitalchain.core.integrity.canonical import (
    _fast,
    device_reading_json,
    reading_json,
    salt_input_json,
)
from vitalchain.core.integrity.devicekeys import signed_bytes
from vitalchain.core.payload.limits import ID_PATTERN, MAX_JSON_INT, MIN_TS_US, VITAL_LIMITS

ids = st.from_regex(ID_PATTERN, fullmatch=True)
vitals = st.fixed_dictionaries({
    name: (st.floats(lo, hi, allow_nan=False) | st.integers(int(lo), int(hi))) if name == "temp_c"
    else st.integers(int(lo), int(hi)) for name, (lo, hi) in VITAL_LIMITS.items()})
readings = st.fixed_dictionaries({"device_id": ids, "patient_id": ids, "seq": st.integers(0, MAX_JSON_INT),
                                  "ts_us": st.integers(MIN_TS_US, MAX_JSON_INT), "vitals": vitals})
KEY = bytes(range(32))


@settings(max_examples=1500, deadline=None)
@given(readings)
def test_readings_and_salts_are_byte_identical_to_rfc8785(reading: dict) -> None:
    canonical = canonical_reading(reading, KEY)
    assert _fast(canonical) is not None  # readings always take the fast path
    assert canonical_json(canonical) == rfc8785.dumps(canonical)
    salt_input = ["vitalchain-salt/1", reading["device_id"], reading["seq"]]
    assert canonical_json(salt_input) == rfc8785.dumps(salt_input)


@settings(max_examples=200, deadline=None)
@given(st.lists(readings, min_size=1, max_size=8), st.integers(0, 63), st.integers(0, 2**40))
def test_window_headers_are_byte_identical_to_rfc8785(batch: list, partition: int, first: int) -> None:
    canonical = [canonical_reading(r, KEY) for r in batch]
    header = build_window_header(canonical, partition=partition, first_offset=first,
                                 last_offset=first + len(batch) - 1, salt_key_id="e528e957", late=0)
    assert _fast(header) is not None
    assert canonical_json(header) == rfc8785.dumps(header)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_JSON_INT, MAX_JSON_INT)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12)


@settings(max_examples=2000, deadline=None)
@given(json_values)
def test_any_json_is_byte_identical_to_rfc8785(value: object) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


def test_float_edges() -> None:
    for x in (0.0, -0.0, 1.0, -37.0, 36.6, 1e-4, 9.999e-5, 1e15 + 0.5, 1e16, 1e21, 5e-324, 0.1 + 0.2,
              2.0**53, -(2.0**53) - 2, 123456789.125):
        assert canonical_json(x) == rfc8785.dumps(x), x
        assert math.isfinite(x)


# --- the reading template (one format string per reading) and the salt input template ----------

@settings(max_examples=1500, deadline=None)
@given(readings)
def test_the_reading_template_is_byte_identical_to_rfc8785(reading: dict) -> None:
    canonical = canonical_reading(reading, KEY)
    assert reading_json(canonical) == rfc8785.dumps(canonical)  # never None on valid readings
    assert salt_input_json("vitalchain-salt/1", reading["device_id"], reading["seq"]) == \
        rfc8785.dumps(["vitalchain-salt/1", reading["device_id"], reading["seq"]])


# Any JSON value in any field, any extra or missing key: the template either steps aside (None)
# or writes exactly what rfc8785 writes.
loose_vitals = st.dictionaries(st.sampled_from(["dia", "hr", "rr", "spo2", "sys", "temp_c", "x"]),
                               json_values, min_size=5, max_size=7)
loose_readings = st.fixed_dictionaries(
    {"device_id": st.text(max_size=8) | ids, "patient_id": ids | st.integers(),
     "salt": st.text(max_size=4) | st.just("ab" * 32), "seq": json_values | st.integers(0, 10),
     "ts_us": st.integers(-2**60, 2**60) | st.floats(), "vitals": loose_vitals | json_values},
    optional={"extra": json_values})


@settings(max_examples=1500, deadline=None)
@given(loose_readings)
def test_the_reading_template_steps_aside_or_agrees_with_rfc8785(obj: dict) -> None:
    text = reading_json(obj)
    if text is not None:
        assert text == rfc8785.dumps(obj)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=10), st.text(max_size=10) | ids,
       st.integers(-2**60, 2**60))
def test_the_salt_template_agrees_with_rfc8785_or_steps_aside(domain: str, device: str,
                                                              seq: int) -> None:
    if abs(seq) <= MAX_JSON_INT:
        assert salt_input_json(domain, device, seq) == rfc8785.dumps([domain, device, seq])
    else:
        with pytest.raises(CanonicalError):
            salt_input_json(domain, device, seq)


@settings(max_examples=300, deadline=None)
@given(readings)
def test_leaves_are_unchanged_by_the_template(reading: dict) -> None:
    canonical = canonical_reading(reading, KEY)
    assert reading_leaf_hash(canonical) == blake3_hasher.leaf(rfc8785.dumps(canonical))


# --- the device reading template (no salt) and the signed bytes of a device message -------------

key_ids = st.from_regex(r"[0-9a-f]{32}", fullmatch=True)


@settings(max_examples=1500, deadline=None)
@given(readings)
def test_the_device_reading_template_is_byte_identical_to_rfc8785(reading: dict) -> None:
    assert device_reading_json(reading) == rfc8785.dumps(reading).decode()  # never None when valid


@settings(max_examples=500, deadline=None)
@given(key_ids, st.lists(readings, min_size=1, max_size=10))
def test_signed_bytes_are_byte_identical_to_rfc8785(key_id: str, batch: list) -> None:
    assert signed_bytes(key_id, batch) == rfc8785.dumps({"key_id": key_id, "readings": batch})


loose_device_readings = st.fixed_dictionaries(
    {"device_id": st.text(max_size=8) | ids, "patient_id": ids | st.integers(),
     "seq": json_values | st.integers(0, 10), "ts_us": st.integers(-2**60, 2**60) | st.floats(),
     "vitals": loose_vitals | json_values},
    optional={"extra": json_values})


@settings(max_examples=1500, deadline=None)
@given(loose_device_readings)
def test_the_device_reading_template_steps_aside_or_agrees_with_rfc8785(obj: dict) -> None:
    text = device_reading_json(obj)
    if text is not None:
        assert text == rfc8785.dumps(obj).decode()


@settings(max_examples=500, deadline=None)
@given(key_ids | st.text(max_size=34), st.lists(readings | loose_device_readings, max_size=4))
def test_signed_bytes_agree_with_rfc8785_on_any_message(key_id: str, batch: list) -> None:
    obj = {"key_id": key_id, "readings": batch}
    try:
        expected = rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError:
        with pytest.raises(CanonicalError):
            signed_bytes(key_id, batch)
    else:
        assert signed_bytes(key_id, batch) == expected
