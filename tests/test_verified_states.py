"""The verified-read state rules (``vitalchain.storage.verified``) on a real ledger file.

No services: rows are built exactly as InfluxDB returns them for ``SELECT *`` (tags + fields +
``time`` in ns), so each rule of docs/API.md's state table is pinned here, edge by edge; the
API tests (tests/test_api_verified_reads.py) show the same states end to end.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from vitalchain.core.integrity import build_window_header, canonical_reading, reading_leaf_hash, salt_key_id
from vitalchain.storage.ledger import Ledger, ReadingIndexRow
from vitalchain.storage.readings import LeafMemo, reading_from_row, reading_point
from vitalchain.storage.verified import ReadState, ReadVerifier

KEY = b"\x33" * 32
TOPIC = "vitals.raw.test"
VITALS = {"hr": 89, "spo2": 97, "rr": 14, "temp_c": 36.7, "sys": 118, "dia": 76}


def canonical(seq: int, device: str = "dev-1") -> dict[str, Any]:
    return canonical_reading({"device_id": device, "patient_id": "pat-1", "seq": seq,
                              "ts_us": 1_750_000_000_000_000 + seq * 1_000_000,
                              "vitals": dict(VITALS)}, KEY)


def row(c: dict[str, Any], window_id: str, leaf: bytes | None = None) -> dict[str, Any]:
    """The ``SELECT *`` row InfluxDB would return for this point."""
    point = reading_point(c, leaf or reading_leaf_hash(c), window_id, False, c["ts_us"] + 5)
    return {"time": point.time_ns, **point.tags, **point.fields}


def seal(ledger: Ledger, readings: list[dict[str, Any]], first_offset: int) -> str:
    leaves = [reading_leaf_hash(c) for c in readings]
    header = build_window_header(readings, partition=0, first_offset=first_offset,
                                 last_offset=first_offset + len(readings) - 1,
                                 salt_key_id=salt_key_id(KEY), leaf_hashes=leaves)
    rows = [ReadingIndexRow(c["device_id"], c["seq"], c["ts_us"], i, leaf)
            for i, (c, leaf) in enumerate(zip(readings, leaves, strict=True))]
    ledger.append_window(TOPIC, 0, header, leaves, rows, idle_cut=False)
    return str(header["window_id"])


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    with Ledger(tmp_path / "ledger.sqlite") as opened:
        yield opened


def states(verifier: ReadVerifier, rows: list[dict[str, Any]]) -> list[str]:
    return [v.state.value for v in verifier.verify(rows)]


def test_before_anything_is_sealed_only_offset_zero_windows_are_open(ledger: Ledger) -> None:
    verifier = ReadVerifier(ledger, TOPIC)
    c = canonical(0)
    assert states(verifier, [row(c, "p0-0"), row(c, "p3-0"), row(c, "p0-1"), row(c, "x"),
                             row(c, "p0-0 "), row(c, "p0-0\n")]) == \
        ["received", "received", "unknown", "unknown", "unknown", "unknown"]


def test_states_after_a_window_is_sealed(ledger: Ledger) -> None:
    a, b, c = canonical(0), canonical(1), canonical(2)
    window = seal(ledger, [a, b], 0)  # p0-0, offsets 0..1: the open window is now p0-2
    assert window == "p0-0"
    verdicts = ReadVerifier(ledger, TOPIC).verify(
        [row(a, "p0-0"), row(b, "forged-window"), row(c, "p0-0"), row(c, "p0-2"), row(c, "p0-3")])
    assert [v.state.value for v in verdicts] == ["sealed", "sealed", "unknown", "received", "unknown"]
    assert verdicts[1].window_id == "p0-0"  # the ledger's window, not the point's claim
    assert "sealed up to offset 1" in verdicts[2].reason
    assert "cannot be open" in verdicts[4].reason
    # inside the anchored checkpoint (log size 1): anchored
    assert states(ReadVerifier(ledger, TOPIC, anchored_size=1), [row(a, "p0-0")]) == ["anchored"]
    # another topic's offsets say nothing about this one
    assert states(ReadVerifier(ledger, "other.topic"), [row(c, "p0-0")]) == ["received"]


def test_after_a_new_epoch_only_that_epochs_open_window_is_received(ledger: Ledger) -> None:
    """Readings are written on receipt in every epoch: ``p0e1-0`` is the open window of epoch 1,
    while a point still naming epoch 0's next window can no longer be in an open window."""
    a, b, c = canonical(0), canonical(1), canonical(2)
    seal(ledger, [a], 0)
    assert ledger.begin_epoch(TOPIC, 0, 0, "broker restarted (test)") == 1
    verdicts = ReadVerifier(ledger, TOPIC).verify(
        [row(a, "p0-0"), row(b, "p0e1-0"), row(c, "p0-1"), row(c, "p0e2-0"), row(c, "p0e1-1")])
    assert [v.state.value for v in verdicts] == ["sealed", "received", "unknown", "unknown",
                                                 "unknown"]
    assert not verdicts[1].verified and verdicts[0].verified
    assert "epoch 0, partition 0 is in epoch 1" in verdicts[2].reason


def test_altered_points_are_caught_whatever_they_claim(ledger: Ledger) -> None:
    a = canonical(0)
    seal(ledger, [a], 0)
    changed = copy.deepcopy(a)
    changed["vitals"]["hr"] = 90  # the 89 -> 90
    forged_leaf = reading_leaf_hash(changed)  # the stored leaf field is never trusted
    moved = copy.deepcopy(a)
    moved["patient_id"] = "pat-2"  # a sealed reading shown under another patient
    unreadable = row(a, "p0-0")
    del unreadable["hr"]
    orphan = row(canonical(9), "p0-1")
    del orphan["spo2"]
    verdicts = ReadVerifier(ledger, TOPIC).verify(
        [row(changed, "p0-0", forged_leaf), row(moved, "p0-0"), unreadable, orphan])
    assert [v.state.value for v in verdicts] == ["altered", "altered", "altered", "unknown"]
    assert "altered after sealing" in verdicts[0].reason
    assert "unreadable" in verdicts[2].reason and verdicts[2].seq == 0
    for v in verdicts:
        served = v.served()
        assert not v.servable and "vitals" not in served and served["state"] == v.state.value


def test_served_readings_carry_values_and_state(ledger: Ledger) -> None:
    a = canonical(0)
    seal(ledger, [a], 0)
    (v,) = ReadVerifier(ledger, TOPIC).verify([row(a, "p0-0")])
    assert v.state is ReadState.SEALED
    assert v.served() == {"device_id": "dev-1", "seq": 0, "ts_us": a["ts_us"], "state": "sealed",
                          "verified": True, "patient_id": "pat-1", "vitals": VITALS, "late": False,
                          "window_id": "p0-0"}


def test_bulk_lookup_is_exact_and_skips_impossible_seqs(ledger: Ledger) -> None:
    readings = [canonical(i) for i in range(1200)]
    seal(ledger, readings, 0)
    found = ledger.locate_many([("dev-1", i) for i in range(0, 1300, 3)] + [("dev-1", 2**64),
                                                                          ("dev-2", 0)])
    assert sorted(seq for _, seq in found) == list(range(0, 1200, 3))


def test_the_leaf_memo_never_hides_a_change(ledger: Ledger) -> None:
    a = canonical(0)
    seal(ledger, [a], 0)
    memo = LeafMemo(capacity=2)
    verifier = ReadVerifier(ledger, TOPIC, memo=memo)
    assert states(verifier, [row(a, "p0-0")] * 2) == ["sealed", "sealed"]
    assert (memo.hits, memo.misses) == (1, 1)
    # same values, another type (89 -> 89.0 hashes alike in JCS) or value: each a fresh hash
    changed = copy.deepcopy(a)
    changed["vitals"]["hr"] = 90
    assert states(verifier, [row(changed, "p0-0"), row(a, "p0-0")]) == ["altered", "sealed"]
    assert memo.misses == 3
    stored = reading_from_row(row(a, "p0-0")).canonical
    retyped = copy.deepcopy(stored)
    retyped["vitals"]["hr"] = 89.0
    assert memo.leaf(retyped) == memo.leaf(stored) == reading_leaf_hash(stored)
    assert memo.misses == 5  # the float 89.0 missed, then the int 89 missed again (replaced)
    for seq in range(1, 5):
        memo.leaf(canonical(seq))
    assert len(memo) == 2  # bounded: oldest out first


def test_points_without_a_leaf_field_get_the_same_verdicts(ledger: Ledger) -> None:
    """D39: the stream stores no ``leaf``.  A point without one (absent, or null in a ``SELECT *``
    over older points that have it) is judged exactly as one with it, and an old point's stored
    leaf, right or forged, changes nothing: the leaf is always recomputed."""
    a, b, c = canonical(0), canonical(1), canonical(2)
    seal(ledger, [a, b], 0)
    altered = copy.deepcopy(b)
    altered["vitals"]["hr"] = 150

    def bare(x: dict[str, Any], window_id: str, null: bool) -> dict[str, Any]:
        point = reading_point(x, None, window_id, False, x["ts_us"] + 5)
        assert "leaf" not in point.fields
        return {"time": point.time_ns, **point.tags, **point.fields,
                **({"leaf": None} if null else {})}

    with_leaf = [row(a, "p0-0"), row(altered, "p0-0"), row(c, "p0-2"),
                 row(altered, "p0-0", leaf=reading_leaf_hash(b))]  # the sealed leaf, forged in
    expected = ["sealed", "altered", "received", "altered"]
    assert states(ReadVerifier(ledger, TOPIC), with_leaf) == expected
    for null in (False, True):
        rows = [bare(a, "p0-0", null), bare(altered, "p0-0", null), bare(c, "p0-2", null),
                bare(altered, "p0-0", null)]
        assert states(ReadVerifier(ledger, TOPIC), rows) == expected
        assert all(reading_from_row(r).leaf_hex is None for r in rows)
