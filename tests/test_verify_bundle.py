"""Offline verification: valid bundles pass, every kind of tampering names its step."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalchain.core.integrity import (
    MerkleLog,
    build_bundle,
    build_window_header,
    canonical_reading,
    reading_leaf_hash,
    salt_key_id,
    window_leaf_hash,
)
from vitalchain.core.integrity.example import example_bundle
from vitalchain.core.verify import verify_bundle

KEY = bytes(range(1, 33))


def make_bundle(n_readings=6, n_windows=5, index=4, window_index=2, anchor=None):
    windows = []
    for w in range(n_windows):
        raw = [{"device_id": f"dev-{i % 2}", "patient_id": f"pat-{i % 2}", "seq": 10 * w + i,
                "ts_us": 1_000_000 * (10 * w + i),
                "vitals": {"hr": 60 + i, "spo2": 95, "rr": 12, "temp_c": 36.5, "sys": 120,
                           "dia": 80}} for i in range(n_readings)]
        readings = [canonical_reading(r, KEY) for r in raw]
        header = build_window_header(readings, partition=w % 2, first_offset=w * n_readings,
                                     last_offset=(w + 1) * n_readings - 1,
                                     salt_key_id=salt_key_id(KEY))
        windows.append((readings, header))
    log = MerkleLog([window_leaf_hash(h) for _, h in windows])
    readings, header = windows[window_index]
    leaves = [reading_leaf_hash(r) for r in readings]
    return build_bundle(readings[index], index, leaves, header, window_index, log, n_windows,
                        anchor)


def test_valid_bundle_pending_and_offline_valid():
    report = verify_bundle(make_bundle())
    assert report.status == "pending" and report.exit_code == 0 and report.ok
    assert [s.step for s in report.steps] == [
        "reading-leaf", "reading-inclusion", "window-contents", "window-leaf",
        "window-inclusion", "checkpoint", "anchor"]
    report = verify_bundle(example_bundle())
    assert report.status == "valid" and not report.anchor_checked
    assert report.steps[-1].ok is None


@pytest.mark.parametrize(("n", "w"), [(1, 1), (2, 1), (7, 3), (33, 9)])
def test_every_reading_of_odd_shapes_verifies(n, w):
    for i in range(n):
        for j in range(w):
            assert verify_bundle(make_bundle(n, w, i, j)).status == "pending"


def tamper(bundle, path, value):
    b = copy.deepcopy(bundle)
    target = b
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value(target[path[-1]]) if callable(value) else value
    return b


def flip_hex(h: str, pos: int = 0) -> str:
    return h[:pos] + format(int(h[pos], 16) ^ 1, "x") + h[pos + 1:]


B = make_bundle()


@pytest.mark.parametrize(
    ("path", "value", "step"),
    [
        (("reading", "vitals", "hr"), 61, "reading-inclusion"),
        (("reading", "seq"), 3, "reading-inclusion"),
        (("reading", "salt"), flip_hex, "reading-inclusion"),
        (("reading", "salt"), None, "reading-leaf"),
        (("reading", "ts_us"), 2**60, "reading-leaf"),
        (("reading_proof", "index"), 3, "reading-inclusion"),
        (("reading_proof", "index"), 6, "reading-inclusion"),
        (("reading_proof", "size"), 7, "reading-inclusion"),
        (("reading_proof", "path"), lambda p: p[:-1], "reading-inclusion"),
        (("window", "root"), flip_hex, "reading-inclusion"),
        (("window", "late"), 1, "checkpoint"),
        (("window", "devices"), {}, "window-contents"),
        (("window", "format"), "vitalchain-window/2", "window-leaf"),
        (("window_proof", "index"), 1, "checkpoint"),
        (("window_proof", "size"), 4, "window-inclusion"),
        (("window_proof", "path"), lambda p: [*p, p[0]], "window-inclusion"),
        (("checkpoint", "root"), flip_hex, "checkpoint"),
        (("checkpoint", "size"), 6, "window-inclusion"),
    ],
)
def test_tampering_names_the_step(path, value, step):
    report = verify_bundle(tamper(B, path, value))
    assert report.status == "invalid" and report.exit_code == 1
    assert report.failed_step == step, report.to_dict()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("format",), "vitalchain-proof/3", "format"),
        (("hash",), "sha256", "only 'blake3'"),
        (("reading_proof", "path"), lambda p: [p[0].upper()], "reading_proof.path[0]"),
        (("reading_proof", "index"), -1, "reading_proof.index"),
        (("window_proof", "size"), "5", "window_proof.size"),
        (("checkpoint", "root"), "00", "checkpoint.root"),
        (("window", "size"), True, "window.size"),
        (("anchor",), {"chain_id": 1}, "anchor"),
        (("reading",), [], "reading must be an object"),
    ],
)
def test_unreadable_bundles_are_errors(path, value, message):
    report = verify_bundle(tamper(B, path, value))
    assert report.status == "error" and report.exit_code == 2
    assert message in report.error


def test_missing_fields_and_non_objects():
    for key in ("reading", "window", "checkpoint", "anchor", "reading_proof"):
        b = copy.deepcopy(B)
        del b[key]
        report = verify_bundle(b)
        assert report.exit_code == 2 and f"missing field $.{key}" in report.error
    assert verify_bundle([1, 2]).status == "error"
    assert verify_bundle(None).status == "error"


def _flip_bit_in_json(value, bit):
    """Flip one bit somewhere in a JSON value's hashed content (numbers, strings)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value ^ (1 << (bit % 20))
    if isinstance(value, float):
        return value + 1.0
    if isinstance(value, str):
        chars = list(value)
        i = bit % len(chars) if chars else 0
        if not chars:
            return "x"
        chars[i] = chr(ord(chars[i]) ^ (1 << (bit % 5)))
        return "".join(chars)
    raise TypeError


def _leaves(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*prefix, i))
    else:
        yield prefix


READING_PATHS = list(_leaves(B["reading"]))
WINDOW_PATHS = list(_leaves(B["window"]))


@settings(max_examples=250, deadline=None)
@given(st.data())
def test_any_bit_flip_in_reading_or_window_or_paths_fails(data):
    part = data.draw(st.sampled_from(["reading", "window", "reading_proof", "window_proof"]))
    bit = data.draw(st.integers(0, 255))
    b = copy.deepcopy(B)
    if part in ("reading", "window"):
        path = data.draw(st.sampled_from(READING_PATHS if part == "reading" else WINDOW_PATHS))
        target = b[part]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = _flip_bit_in_json(target[path[-1]], bit)
    else:
        elements = b[part]["path"]
        i = data.draw(st.integers(0, len(elements) - 1))
        raw = bytearray(bytes.fromhex(elements[i]))
        raw[bit // 8] ^= 1 << (bit % 8)
        elements[i] = raw.hex()
    report = verify_bundle(b)
    assert report.status in ("invalid", "error"), (part, report.to_dict())
