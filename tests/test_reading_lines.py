"""Bulk line protocol of readings: ``reading_lines`` writes exactly what ``reading_point(...)
.to_line()`` writes, for every reading the schema allows (hypothesis) and for odd inputs that must
take the slow path (ids needing escapes, strings needing quotes, non-finite numbers)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalchain.core.payload.limits import MAX_JSON_INT, MIN_TS_US, VITAL_LIMITS
from vitalchain.storage.readings import reading_lines, reading_point

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


@settings(max_examples=1500, deadline=None)
@given(st.lists(rows, min_size=1, max_size=5))
def test_bulk_lines_are_the_points_lines(batch: list) -> None:
    assert reading_lines(batch) == [reading_point(*row).to_line() for row in batch]


@settings(max_examples=500, deadline=None)
@given(canonical(odd_ids), st.text(alphabet=st.sampled_from('p0-"\\ é'), min_size=1,
                                    max_size=6))
def test_ids_and_window_ids_needing_escapes_take_the_points_path(c: dict, window_id: str) -> None:
    row = (c, b"\x01" * 32, window_id, False, 5, None)
    assert reading_lines([row]) == [reading_point(*row).to_line()]


def test_non_finite_vitals_are_refused_as_before() -> None:
    c = {"device_id": "d", "patient_id": "p", "seq": 1, "ts_us": MIN_TS_US, "salt": "ab",
         "vitals": {"hr": 70, "spo2": 97, "rr": 14, "temp_c": float("nan"), "sys": 120,
                    "dia": 80}}
    with pytest.raises(ValueError):
        reading_lines([(c, b"\x00", "p0-0", False, 1, None)])
