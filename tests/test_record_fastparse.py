"""The raw record's fast parse (orjson, taken only for orjson's own spelling) says exactly what the
strict parser says: same values with the same types, same refusals with the same details, on
valid and invalid values alike (pure, no services)."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.test_windowing import T0, reading
from vitalchain.core.payload.record import RecordError, decode, encode, encode_v1, replayed
from vitalchain.core.payload.validation import MAX_DEPTH, _Reject, parse, parse_canonical


def typed(value: Any) -> Any:
    """A value with its types spelled out (1, 1.0 and True differ; -0.0 and 0.0 differ)."""
    if isinstance(value, dict):
        return ("dict", [(k, typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


def outcome(parser: Any, payload: bytes) -> Any:
    try:
        return ("ok", typed(parser(payload)))
    except _Reject as exc:
        return ("refused", exc.reason, exc.detail)


def record_outcome(value: bytes, strict: bool) -> Any:
    import vitalchain.core.payload.validation as validation

    if not strict:
        try:
            return ("ok", repr(decode(value)))
        except RecordError as exc:
            return ("refused", str(exc))
    fast = validation.parse_canonical
    validation.parse_canonical = validation.parse  # decode's own logic on the strict parse
    try:
        return ("ok", repr(decode(value)))
    except RecordError as exc:
        return ("refused", str(exc))
    finally:
        validation.parse_canonical = fast


def assert_agree(payload: bytes) -> None:
    assert outcome(parse_canonical, payload) == outcome(parse, payload)
    assert record_outcome(payload, strict=False) == record_outcome(payload, strict=True)


scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=20)


def spellings(value: Any) -> list[bytes]:
    out = [json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8",
                                                                              "surrogatepass"),
           json.dumps(value).encode(), json.dumps(value, indent=1).encode()]
    with contextlib.suppress(orjson.JSONEncodeError):  # a huge integer: orjson cannot write it
        out.append(orjson.dumps(value))
    return out


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_fast_and_strict_parse_agree_on_any_json_in_any_spelling(value: Any) -> None:
    for payload in spellings(value):
        assert_agree(payload)


def valid_readings(n: int, first: int = 0) -> list[dict]:
    return [reading("d-1", first + i, T0 + i * 200_000) for i in range(n)]


records = st.builds(
    lambda n, received, signed, first: encode(
        valid_readings(n, first), received,
        {"at": [T0, first], "key_id": "k1", "sig": "c2ln", "readings": valid_readings(n, first)}
        if signed else None),
    st.integers(1, 12), st.integers(0, 2**63), st.booleans(), st.integers(0, 2**53))


@settings(max_examples=300, deadline=None)
@given(records, st.data())
def test_fast_and_strict_decode_agree_on_records_and_their_mutations(value: bytes,
                                                                       data: st.DataObject) -> None:
    assert_agree(value)
    assert_agree(replayed(value, 5))
    # One byte changed, one inserted, one dropped: mostly invalid JSON or other values.
    i = data.draw(st.integers(0, len(value) - 1))
    b = data.draw(st.sampled_from(b'{}[]",:0123456789.eE-+ \\nNaIfty'))
    for mutated in (value[:i] + bytes([b]) + value[i + 1:], value[:i] + bytes([b]) + value[i:],
                    value[:i] + value[i + 1:]):
        assert_agree(mutated)


@example(b'{"v":2,"received_us":1,"v":2,"readings":[{}]}')  # duplicate key: refused by both
@example(b'{"v":2,"received_us":1,"readings":[{"a":NaN}]}')  # NaN: refused by both
@example(b'{"v":2,"received_us":1,"readings":[1e400]}')  # overflows to inf: accepted by both
@example(b'{"v":2,"received_us":1,"readings":[18446744073709551616]}')  # beyond 64 bits
@example(b'{"v":2,"received_us":1,"readings":["\\ud800"]}')  # a lone surrogate
@example(b'{"v":2,"received_us":1,"readings":[1E5,1e-05,-0]}')  # non-canonical numbers
@example(b'{"v":2,"received_us":1,"readings":["\\u00e9"]}')  # an escape orjson does not write
@example(b'\xef\xbb\xbf{"v":2,"received_us":1,"readings":[{}]}')  # a BOM
@example(b'{"v":2,"received_us":1,"readings":[{}]}\n')  # trailing whitespace
@example(b'{"v":2,"received_us":1,"readings":[{"a":"\xff"}]}')  # not UTF-8
@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=60))
def test_fast_and_strict_agree_on_odd_bytes(payload: bytes) -> None:
    assert_agree(payload)


def test_the_nesting_guard_holds_on_the_fast_path() -> None:
    for depth in (MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 200):
        inner: Any = 1
        for _ in range(depth - 2):
            inner = [inner]
        value = orjson.dumps({"v": 2, "received_us": 1, "readings": [inner]})
        assert orjson.dumps(orjson.loads(value)) == value  # canonical: the fast path's input
        assert_agree(value)
    assert outcome(parse_canonical, value)[:2] == ("refused", "malformed_json")
    # deeper than orjson writes (254) but not than it reads (1,024): the strict parser's verdict
    deep = b"[" * 300 + b"]" * 300
    assert outcome(parse_canonical, deep) == outcome(parse, deep)


def test_the_bridge_writes_orjson_spelling_and_older_spellings_still_decode() -> None:
    readings = valid_readings(3)
    readings[1]["vitals"]["temp_c"] = 1e-05  # stdlib and orjson spell this float differently
    value = encode(readings, 42)
    assert orjson.dumps(orjson.loads(value)) == value
    stdlib = json.dumps({"v": 2, "received_us": 42, "readings": readings},
                        separators=(",", ":"), ensure_ascii=False).encode()
    assert stdlib != value
    assert decode(stdlib) == decode(value)
    assert decode(encode_v1(readings[0], 42)).readings == [readings[0]]


def test_what_orjson_cannot_write_is_written_by_the_stdlib_and_read_strictly() -> None:
    readings = valid_readings(2)
    as_sent = [*readings, {"seq": 2**70, "note": "\ud800"}]  # a signed message's bad reading
    signed = {"at": [T0, 0], "key_id": "k1", "sig": "c2ln", "readings": as_sent}
    value = encode(readings, 1, signed)
    decoded = decode(value)
    assert decoded.signed["readings"][2]["seq"] == 2**70
    assert decoded.signed["readings"][2]["note"] == "\ud800"
    assert_agree(value)


def test_floats_round_trip_exactly() -> None:
    for x in (0.1, 36.6, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, -0.0, 2.0**53 + 2):
        value = encode([{**valid_readings(1)[0], "x": x}], 1)
        got = decode(value).readings[0]["x"]
        assert math.copysign(1, got) == math.copysign(1, x) and got == x
