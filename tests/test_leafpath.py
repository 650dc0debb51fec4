"""ingest.leafpath: the stream's one-pass checks + salt + canonical object + leaf are exactly the
three-step way's, on valid readings (byte-identical leaves, checked against ``rfc8785`` too) and
on invalid ones (the same refusal, with the same detail, for the dead letter)."""

from __future__ import annotations

import math
from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalchain.core.integrity import blake3_hasher
from vitalchain.core.payload.limits import ID_PATTERN, MAX_JSON_INT, MIN_TS_US, VITAL_LIMITS
from vitalchain.ingest.leafpath import reading_leaf, slow_reading_leaf

KEY = bytes(range(32))
ids = st.from_regex(ID_PATTERN, fullmatch=True)
vitals = st.fixed_dictionaries({
    name: (st.floats(lo, hi, allow_nan=False) | st.integers(int(lo), int(hi))) if name == "temp_c"
    else st.integers(int(lo), int(hi)) for name, (lo, hi) in VITAL_LIMITS.items()})
readings = st.fixed_dictionaries({"device_id": ids, "patient_id": ids,
                                  "seq": st.integers(0, MAX_JSON_INT),
                                  "ts_us": st.integers(MIN_TS_US, MAX_JSON_INT), "vitals": vitals})
# Values that break one check or leave the plain JCS domain: wrong types, bools, out of range,
# non-finite and huge numbers, strings with quotes, escapes and non-ASCII.
odd_values = (st.none() | st.booleans() | st.integers(-2**64, 2**64)
              | st.floats(allow_nan=True, allow_infinity=True)
              | st.text(max_size=8) | st.sampled_from(['a"b', "a\\b", "é", "", " x", "a" * 65])
              | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3),
                                                                      st.integers(), max_size=2))

ALTERATIONS = ("top", "vitals", "drop", "drop_vital", "extra", "extra_vital", "dia_sys")


def outcome(fn: Any, item: Any, key: bytes = KEY) -> tuple[str, Any]:
    try:
        return "ok", fn(item, key)
    except Exception as exc:  # the refusal itself is what is compared
        return type(exc).__name__, str(exc)


@settings(max_examples=1500, deadline=None)
@given(readings)
def test_schema_readings_give_the_same_object_and_leaf(reading: dict) -> None:
    """The schema's domain (dia >= sys among it, refused by both)."""
    got = outcome(reading_leaf, reading)
    assert got == outcome(slow_reading_leaf, reading)
    if reading["vitals"]["dia"] < reading["vitals"]["sys"]:
        canonical, leaf = got[1]
        assert leaf == blake3_hasher.leaf(rfc8785.dumps(canonical))


def altered(reading: dict[str, Any], data: st.DataObject,
            where: tuple[str, ...] = ALTERATIONS) -> dict[str, Any]:
    """``reading`` with one check broken, drawn from ``where`` (an odd value may still be a valid
    one; ``"none"`` leaves it as it was). Shared with tests/test_validation_onepass.py."""
    item: dict[str, Any] = {**reading, "vitals": dict(reading["vitals"])}
    kind = data.draw(st.sampled_from(where))
    if kind == "top":
        item[data.draw(st.sampled_from(sorted(item)))] = data.draw(odd_values)
    elif kind == "vitals":
        item["vitals"][data.draw(st.sampled_from(sorted(VITAL_LIMITS)))] = data.draw(odd_values)
    elif kind == "drop":
        del item[data.draw(st.sampled_from(sorted(item)))]
    elif kind == "drop_vital":
        del item["vitals"][data.draw(st.sampled_from(sorted(VITAL_LIMITS)))]
    elif kind == "extra":
        item[data.draw(st.sampled_from(["salt", "received_us", "x"]))] = 1
    elif kind == "extra_vital":
        item["vitals"]["bp"] = 1
    elif kind == "dia_sys":
        item["vitals"]["dia"] = item["vitals"]["sys"] + data.draw(st.integers(-1, 0)) + 1
    return item


@settings(max_examples=2000, deadline=None)
@given(readings, st.data())
def test_altered_readings_are_refused_or_taken_exactly_as_before(reading: dict,
                                                                 data: st.DataObject) -> None:
    item = altered(reading, data)
    assert outcome(reading_leaf, item) == outcome(slow_reading_leaf, item)


def test_edges_of_the_fast_path() -> None:
    base = {"device_id": "w-1", "patient_id": "p-1", "seq": 0, "ts_us": MIN_TS_US,
            "vitals": {"hr": 20, "spo2": 100, "rr": 80, "temp_c": 25.0, "sys": 300, "dia": 200}}
    for temp in (25.0, 45.0, 45, 36.6, 37.0, 0.1 + 36.2, math.nextafter(45.0, 0)):
        item = {**base, "vitals": {**base["vitals"], "temp_c": temp}}
        assert reading_leaf(item, KEY) == slow_reading_leaf(item, KEY)
    for item in ({**base, "seq": MAX_JSON_INT, "ts_us": MAX_JSON_INT},
                 {**base, "seq": MAX_JSON_INT + 1}, {**base, "ts_us": MIN_TS_US - 1},
                 {**base, "seq": True}, [base], None):
        assert outcome(reading_leaf, item) == outcome(slow_reading_leaf, item)
    for key in (bytes(31), bytearray(32), "k" * 32):  # a bad salt key is refused the same way
        assert outcome(reading_leaf, base, key) == outcome(slow_reading_leaf, base, key)  # type: ignore[arg-type]



def test_an_integer_beyond_a_doubles_range_is_refused_not_raised() -> None:
    """A raw record is not trusted blindly: an integer temp_c of 400 digits (valid JSON) made
    ``math.isfinite`` raise OverflowError out of ``offer``, which catches only refusals, and the
    record would have stopped the worker again after every restart."""
    base = {"device_id": "w-1", "patient_id": "p-1", "seq": 0, "ts_us": MIN_TS_US,
            "vitals": {"hr": 60, "spo2": 97, "rr": 14, "temp_c": 10**400, "sys": 120, "dia": 80}}
    for temp in (10**400, -(10**400), 2**1024):
        item = {**base, "vitals": {**base["vitals"], "temp_c": temp}}
        got = outcome(reading_leaf, item)
        assert got[0] == "ValueError" and "temp_c" in got[1]
        assert got == outcome(slow_reading_leaf, item)

@settings(max_examples=300, deadline=None)
@given(readings, st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=3))
def test_each_salt_key_salts_with_its_own_key(reading: dict, keys: list[bytes]) -> None:
    """The keyed hasher remembered per salt key (copied per reading) salts exactly as a keyed
    hasher made for the reading, key after key in one process."""
    for key in keys + keys[::-1]:
        assert outcome(reading_leaf, reading, key) == outcome(slow_reading_leaf, reading, key)
