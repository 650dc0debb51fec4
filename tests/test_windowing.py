"""The cut rule, dedup, conflicts and late flags of ingest.windowing (pure, no services)."""

from __future__ import annotations

import base64
import json

import pytest

from vitalchain.core.integrity import canonical_reading, reading_leaf_hash, root
from vitalchain.ingest.windowing import ClosedWindow, PartitionWindower

KEY = bytes(range(32))
SECOND = 1_000_000
T0 = 1_700_000_000 * SECOND


def reading(device: str, seq: int, ts_us: int, hr: int = 70) -> dict:
    return {"device_id": device, "patient_id": f"pat-{device}", "seq": seq, "ts_us": ts_us,
            "vitals": {"hr": hr, "spo2": 97, "rr": 14, "temp_c": 36.6, "sys": 120, "dia": 80}}


def record(r: dict, received_us: int = 1) -> bytes:
    return json.dumps({**r, "received_us": received_us}).encode()


def windower(sealed: dict | None = None, sealed_offset: int | None = None,
             prev_end_us: int | None = None) -> PartitionWindower:
    sealed = sealed or {}
    return PartitionWindower("raw", 3, window_us=2 * SECOND, salt_key=KEY, salt_key_id="k",
                             sealed_offset=sealed_offset, prev_end_us=prev_end_us,
                             sealed_leaf=lambda d, s: sealed.get((d, s)))


def feed(w: PartitionWindower, values: list[bytes], start: int = 0) -> list[ClosedWindow]:
    closed = []
    for offset, value in enumerate(values, start):
        result = w.offer(offset, value)
        if result.closed:
            closed.append(result.closed)
    return closed


def test_event_time_cut_starts_next_window_with_the_cutting_record() -> None:
    w = windower()
    values = [record(reading("d1", i, T0 + i * 500_000)) for i in range(9)]  # 0 .. 4.0 s
    closed = feed(w, values)
    assert [(c.first_offset, c.last_offset) for c in closed] == [(0, 3), (4, 7)]
    first = closed[0]
    assert first.header["window_id"] == "p3-0"
    assert first.header["size"] == 4
    assert first.header["start_us"] == T0 and first.header["end_us"] == T0 + 1_500_000
    canon = [canonical_reading(reading("d1", i, T0 + i * 500_000), KEY) for i in range(4)]
    assert first.header["root"] == root([reading_leaf_hash(c) for c in canon]).hex()
    assert not first.idle_cut
    tail = w.cut_idle()
    assert tail is not None and tail.idle_cut and (tail.first_offset, tail.last_offset) == (8, 8)


def test_replay_reproduces_identical_windows() -> None:
    values = [record(reading(f"d{i % 3}", i // 3, T0 + i * 300_000 + (i % 5) * 7)) for i in range(40)]
    a = feed(windower(), values)
    b = feed(windower(), values)
    assert [c.header for c in a] == [c.header for c in b]
    # Replaying from a sealed offset reproduces the later windows exactly.
    w = windower(sealed_offset=a[0].last_offset, prev_end_us=a[0].header["end_us"])
    c = feed(w, values[a[0].last_offset + 1:], start=a[0].last_offset + 1)
    assert [x.header for x in c] == [x.header for x in a[1:]]


def test_duplicates_are_dropped_and_conflicts_dead_lettered() -> None:
    original = reading("d1", 5, T0)
    sealed_leaf = reading_leaf_hash(canonical_reading(original, KEY))
    w = windower(sealed={("d1", 5): sealed_leaf}, sealed_offset=9)
    assert w.offer(10, record(original, received_us=99)).outcome == "duplicate"  # vs ledger
    assert w.offer(11, record(reading("d1", 5, T0, hr=71))).outcome == "conflict"  # vs ledger
    assert w.offer(12, record(reading("d1", 6, T0 + 1))).outcome == "kept"
    assert w.offer(13, record(reading("d1", 6, T0 + 1))).outcome == "duplicate"  # vs open window
    assert w.offer(14, record(reading("d1", 6, T0 + 2))).outcome == "conflict"  # vs open window
    assert w.offer(12, record(reading("d1", 6, T0 + 1))).outcome == "already_done"
    closed = w.cut_idle()
    assert closed is not None
    assert (closed.first_offset, closed.last_offset, closed.header["size"]) == (10, 14, 1)
    assert closed.duplicates == 2
    letters = [json.loads(d.value) for d in closed.dead_letters]
    assert [x["reason"] for x in letters] == ["seq_conflict", "seq_conflict"]
    assert letters[0]["stage"] == "stream" and letters[0]["topic"] == "raw"
    assert json.loads(base64.b64decode(letters[0]["payload_b64"]))["vitals"]["hr"] == 71


def test_range_of_only_duplicates_closes_without_header() -> None:
    original = reading("d1", 5, T0)
    leaf = reading_leaf_hash(canonical_reading(original, KEY))
    w = windower(sealed={("d1", 5): leaf}, sealed_offset=0)
    w.offer(1, record(original))
    closed = w.cut_idle()
    assert closed is not None and closed.header is None and closed.duplicates == 1


def test_late_readings_are_kept_and_flagged() -> None:
    w = windower(sealed_offset=4, prev_end_us=T0 + 10 * SECOND)
    assert w.offer(5, record(reading("d1", 1, T0 + 11 * SECOND))).late is False
    result = w.offer(6, record(reading("d2", 1, T0 + 3 * SECOND)))
    assert result.outcome == "kept" and result.late is True
    closed = w.cut_idle()
    assert closed is not None and closed.header["late"] == 1 and closed.header["size"] == 2
    assert [r.late for r in closed.readings] == [False, True]
    # After an event-time cut, the next window's lateness is judged against the cut window.
    w2 = windower()
    cut = feed(w2, [record(reading("d1", 1, T0)), record(reading("d1", 2, T0 + 1_500_000)),
                    record(reading("d1", 3, T0 + 3 * SECOND)),
                    record(reading("d2", 1, T0 + SECOND)),
                    record(reading("d3", 1, T0 - 600_000))])
    assert [c.header["end_us"] for c in cut] == [T0 + 1_500_000]
    tail = w2.cut_idle()
    # d2 is behind the cut window's newest reading but within a window length of it: not late;
    # d3 was sampled more than a window length (2 s) before it: late.
    assert tail is not None and [r.late for r in tail.readings] == [False, False, True]


@pytest.mark.parametrize("value", [b"not json", b"{}", json.dumps(reading("d1", 1, T0)).encode(),
                                   json.dumps({**reading("d1", 1, T0), "received_us": 1,
                                               "extra": 1}).encode()])
def test_invalid_records_are_dead_lettered(value: bytes) -> None:
    w = windower()
    assert w.offer(0, value).outcome == "invalid"
    closed = w.cut_idle()
    assert closed is not None and closed.header is None
    assert json.loads(closed.dead_letters[0].value)["reason"] == "invalid_record"


def test_windows_carry_their_epoch_and_the_identity_of_their_last_record() -> None:
    from vitalchain.ingest.windowing import record_hash

    w = PartitionWindower("raw", 3, window_us=2 * SECOND, salt_key=KEY, salt_key_id="k",
                          sealed_offset=None, prev_end_us=None, sealed_leaf=lambda d, s: None,
                          epoch=2)
    values = [record(reading("d1", i, T0 + i * 500_000)) for i in range(5)]
    [closed] = feed(w, values)
    assert (closed.epoch, closed.first_offset, closed.last_offset) == (2, 0, 3)
    assert closed.header["window_id"] == "p3e2-0" and closed.header["epoch"] == 2
    assert closed.tail_hash == record_hash(b"", values[3])
    assert record_hash(b"", values[3]) != record_hash(b"d1", values[3])
    assert windower().offer(0, values[0]).outcome == "kept"


# --- dedup by the per-device mark (no ledger round trip for a seq above what is sealed) --------

def _sealed_in(ledger, closed: ClosedWindow) -> None:
    from vitalchain.storage.ledger import ReadingIndexRow

    rows = [ReadingIndexRow(r.canonical["device_id"], r.canonical["seq"], r.canonical["ts_us"], i,
                            r.leaf) for i, r in enumerate(closed.readings)]
    ledger.append_window(closed.topic, closed.partition, closed.header, closed.leaf_hashes, rows,
                         closed.idle_cut, closed.tail_hash)


def counting_windower(ledger, partition: int = 3) -> tuple[PartitionWindower, list, list]:
    """A windower on a real ledger, as the processor builds it, counting the ledger lookups."""
    leaf_asks: list = []
    high_asks: list = []

    def sealed_leaf(d: str, s: int) -> bytes | None:
        leaf_asks.append((d, s))
        return ledger.sealed_leaf(d, s)

    def sealed_high(d: str) -> int | None:
        high_asks.append(d)
        return ledger.max_sealed_seq(d)

    w = PartitionWindower("raw", partition, window_us=2 * SECOND, salt_key=KEY, salt_key_id="k",
                          sealed_offset=None, prev_end_us=None, sealed_leaf=sealed_leaf,
                          sealed_high=sealed_high)
    return w, leaf_asks, high_asks


def test_new_seqs_need_no_ledger_lookup_and_sealed_ones_are_still_found(tmp_path) -> None:
    from vitalchain.storage.ledger import Ledger

    ledger = Ledger(tmp_path / "l.sqlite")
    values = [record(reading(f"d{i % 3}", i // 3, T0 + i * 100_000)) for i in range(30)]
    w, leaf_asks, high_asks = counting_windower(ledger)
    closed = feed(w, values)
    for c in closed:
        _sealed_in(ledger, c)
        w.mark_sealed(c)
    # Nothing sealed at first sight: one max query per device, no per-reading lookups.
    assert sorted(high_asks) == ["d0", "d1", "d2"] and leaf_asks == []
    sealed_count = sum(c.header["size"] for c in closed)
    assert ledger.max_sealed_seq("d0") == max(r.canonical["seq"] for c in closed
                                              for r in c.readings
                                              if r.canonical["device_id"] == "d0")
    assert ledger.max_sealed_seq("nobody") is None
    # The same records again, from a fresh windower (another partition, so the ledger takes its
    # windows): the sealed readings are duplicates (found in the ledger), a changed one is a
    # conflict, the unsealed tail and new seqs are kept, and new seqs cost no lookup.
    w2, leaf_asks2, high_asks2 = counting_windower(ledger, partition=4)
    outcomes = [w2.offer(i, v).outcome for i, v in enumerate(values)]
    assert outcomes.count("duplicate") == sealed_count
    assert outcomes[sealed_count:] == ["kept"] * (30 - sealed_count)
    assert len(leaf_asks2) == sealed_count and sorted(high_asks2) == ["d0", "d1", "d2"]
    changed = record(reading("d0", 0, T0, hr=99))
    assert w2.offer(30, changed).outcome == "conflict"
    before = len(leaf_asks2)
    assert w2.offer(31, record(reading("d0", 500, T0 + 4 * SECOND))).outcome == "kept"
    assert len(leaf_asks2) == before  # above the mark: no lookup
    # Sealing raises the mark: the seq just sealed is asked for again, and found.
    tail = w2.cut_idle()
    assert tail is not None
    _sealed_in(ledger, tail)
    w2.mark_sealed(tail)
    assert w2.offer(32, record(reading("d0", 500, T0 + 4 * SECOND))).outcome == "duplicate"
    assert leaf_asks2[-1] == ("d0", 500)
