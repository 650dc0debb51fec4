"""Bulk line protocol of readings: ``reading_lines`` writes exactly what ``reading_point(...,
leaf=None, ...).to_line()`` writes, for every reading the schema allows (hypothesis) and for odd
inputs that must take the slow path (ids needing escapes, strings needing quotes, non-finite
numbers); that is the line written before D39 with only its ``leaf`` field taken out; and
``signed_message_line`` is ``signed_message_point(...).to_line()``."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalchain.core.payload.limits import MAX_JSON_INT, MIN_TS_US, VITAL_LIMITS
from vitalchain.storage.readings import (
    reading_from_row,
    reading_lines,
    reading_point,
    signed_message_line,
    signed_message_point,
)

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
odd_ids = st.text(alphabet=st.sampled_from('ab ,=\\"é-_.'), min_size=1, max_size=10)


def vitals() -> st.SearchStrategy[dict]:
    parts = {}
    for name, (low, high) in VITAL_LIMITS.items():
        if name == "temp_c":
            parts[name] = st.floats(low, high) | st.integers(int(low), int(high))
        else:
            parts[name] = st.integers(int(low), int(high))
    return st.fixed_dictionaries(parts)


def canonical(device_ids: st.SearchStrategy[str]) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({
        "device_id": device_ids, "patient_id": device_ids,
        "seq": st.integers(0, MAX_JSON_INT), "ts_us": st.integers(MIN_TS_US, MAX_JSON_INT),
        "vitals": vitals(), "salt": st.from_regex(r"[0-9a-f]{64}", fullmatch=True)})


rows = st.tuples(canonical(ids), st.binary(min_size=32, max_size=32),
                 st.from_regex(r"p[0-9]{1,3}(e[0-9]{1,3})?-[0-9]{1,12}", fullmatch=True),
                 st.booleans(), st.integers(0, MAX_JSON_INT),
                 st.none() | st.integers(0, MAX_JSON_INT))


def _without_leaf(row: tuple) -> tuple:
    return (row[0], None, *row[2:])


@settings(max_examples=1500, deadline=None)
@given(st.lists(rows, min_size=1, max_size=5))
def test_bulk_lines_are_the_points_lines(batch: list) -> None:
    assert reading_lines(batch) == [reading_point(*_without_leaf(row)).to_line()
                                    for row in batch]


@settings(max_examples=1000, deadline=None)
@given(st.lists(rows, min_size=1, max_size=5))
def test_bulk_lines_are_the_old_lines_without_the_leaf(batch: list) -> None:
    """Every field kept is spelled byte for byte as before D39 (the point with a leaf, which
    ``reading_point`` still writes for old-shape points), in the same order."""
    old = [reading_point(*row).to_line() for row in batch]
    new = reading_lines(batch)
    for row, before, after in zip(batch, old, new, strict=True):
        leaf_field = f',leaf="{row[1].hex()}"'
        assert before.count(leaf_field) == 1
        assert after == before.replace(leaf_field, "")
        assert "leaf=" not in after


@settings(max_examples=500, deadline=None)
@given(canonical(odd_ids), st.text(alphabet=st.sampled_from('p0-"\\ é\n'), min_size=1,
                                    max_size=6))
def test_ids_and_window_ids_needing_escapes_take_the_points_path(c: dict, window_id: str) -> None:
    row = (c, b"\x01" * 32, window_id, False, 5, None)
    assert reading_lines([row]) == [reading_point(*_without_leaf(row)).to_line()]


numbers = (st.integers(-(2**60), 2**60) | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from([0, 0.0, -0.0, 1, 1.0, True, False, 72, 72.0, 36.6, 1e16, 2**53 + 1]))


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(st.fixed_dictionaries({name: numbers for name in VITAL_LIMITS}),
                          st.booleans()), min_size=1, max_size=8))
def test_remembered_float_spellings_are_each_values_own(vitals: list) -> None:
    """The vitals' spellings are remembered by value across calls: an int and the float equal to
    it share one, 0 and -0.0 do not, and no value outside the schema gets another's spelling."""
    c = {"device_id": "d", "patient_id": "p", "seq": 1, "ts_us": MIN_TS_US, "salt": "ab"}
    batch = [({**c, "vitals": v}, b"", "p0-0", late, 1, None) for v, late in vitals]
    assert reading_lines(batch) == [reading_point(*_without_leaf(row)).to_line()
                                    for row in batch]


signed_text = st.text(alphabet=st.sampled_from('aZ09+/=_-"\\ \né,'), min_size=1, max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8)


@settings(max_examples=1000, deadline=None)
@given(ids | odd_ids, signed_text | st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
       signed_text | st.from_regex(r"[A-Za-z0-9_-]{86}", fullmatch=True),
       st.lists(json_values, max_size=4), st.integers(MIN_TS_US, MAX_JSON_INT),
       st.integers(0, MAX_JSON_INT))
def test_signed_message_line_is_the_points_line(device_id: str, key_id: str, sig: str,
                                                readings: list, ts_us: int, seq: int) -> None:
    signed = {"key_id": key_id, "sig": sig, "readings": readings, "at": [ts_us, seq]}
    assert signed_message_line(device_id, signed) == \
        signed_message_point(device_id, signed).to_line()


def _row_of(line: str) -> dict:
    """The row ``SELECT *`` returns for a line this module writes (enough of the grammar)."""
    head, fields, time_ns = line.rsplit(" ", 2)
    row: dict = dict(tag.split("=", 1) for tag in head.split(",")[1:])
    for name, value in re.findall(r'(\w+)=("[^"]*"|[^,]+)', fields):
        row[name] = (value.strip('"') if value.startswith('"') else
                     int(value[:-1]) if value.endswith("i") else
                     value == "true" if value in ("true", "false") else float(value))
    row["time"] = int(time_ns)
    return row


def test_points_with_and_without_the_leaf_field_read_back_alike() -> None:
    c = {"device_id": "dev-1", "patient_id": "pat-1", "seq": 7, "ts_us": MIN_TS_US,
         "salt": "ab" * 32, "vitals": {"hr": 70, "spo2": 97, "rr": 14, "temp_c": 36.6,
                                       "sys": 120, "dia": 80}}
    row = (c, b"\x05" * 32, "p0-3", True, MIN_TS_US + 9, None)
    [new] = reading_lines([row])
    old = reading_point(*row).to_line()
    now, before = reading_from_row(_row_of(new)), reading_from_row(_row_of(old))
    assert now.canonical == before.canonical == c
    assert (now.window_id, now.late, now.received_us) == ("p0-3", True, MIN_TS_US + 9)
    assert (before.window_id, before.late, before.received_us) == ("p0-3", True, MIN_TS_US + 9)
    assert now.leaf_hex is None and before.leaf_hex == "05" * 32


def test_non_finite_vitals_are_refused_as_before() -> None:
    c = {"device_id": "d", "patient_id": "p", "seq": 1, "ts_us": MIN_TS_US, "salt": "ab",
         "vitals": {"hr": 70, "spo2": 97, "rr": 14, "temp_c": float("nan"), "sys": 120,
                    "dia": 80}}
    with pytest.raises(ValueError):
        reading_lines([(c, b"\x00", "p0-0", False, 1, None)])
    with pytest.raises(ValueError):  # the same after the spellings of its finite vitals are known
        reading_lines([(c, b"\x00", "p0-0", False, 1, None)])
