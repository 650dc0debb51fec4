"""The fleet-wide seq writers (``renew_all``/``close_all``): one sync for many files, and the
crash rule of one file still holds: a restarted device never reuses a seq, and a clean stop
leaves no gap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vitalchain.devices import seqstore
from vitalchain.devices.seqstore import SeqCounter, close_all, renew_all


def _mark(path: Path) -> int:
    return json.loads(path.read_text())["next_seq"]


def _counters(folder: Path, n: int, block: int = 8) -> list[SeqCounter]:
    return [SeqCounter(folder / f"dev-{i}.json", block) for i in range(n)]


def test_renew_all_reserves_a_block_for_every_device_before_it_is_used(tmp_path: Path) -> None:
    counters = _counters(tmp_path, 5)
    renew_all(counters)
    assert [_mark(c.path) for c in counters] == [8] * 5
    for counter in counters:
        assert [counter.take() for _ in range(8)] == list(range(8))
    # the block was durable before use: taking it wrote nothing more
    assert [_mark(c.path) for c in counters] == [8] * 5
    assert not list(tmp_path.glob("*.tmp"))


def test_crash_after_renew_all_never_repeats_a_seq(tmp_path: Path) -> None:
    counters = _counters(tmp_path, 3)
    renew_all(counters)
    used = {c.path: [c.take() for _ in range(5)] for c in counters}
    # no close: the process died; a new one starts from the files
    for path, seqs in used.items():
        again = SeqCounter(path, 8)
        assert again.peek > max(seqs)


def test_close_all_records_the_exact_next_seq(tmp_path: Path) -> None:
    counters = _counters(tmp_path, 4)
    renew_all(counters)
    for i, counter in enumerate(counters):
        for _ in range(i):
            counter.take()
    close_all(counters)
    assert [_mark(c.path) for c in counters] == [0, 1, 2, 3]
    assert [SeqCounter(c.path, 8).peek for c in counters] == [0, 1, 2, 3]
    renew_all(counters)  # closed counters are left alone
    assert [_mark(c.path) for c in counters] == [0, 1, 2, 3]


def test_renew_all_continues_above_the_previous_run(tmp_path: Path) -> None:
    first = _counters(tmp_path, 2)
    renew_all(first)
    for counter in first:
        counter.take()
    close_all(first)
    second = _counters(tmp_path, 2)
    renew_all(second)
    assert [c.take() for c in second] == [1, 1]
    assert [_mark(c.path) for c in second] == [9, 9]


def test_a_failed_sync_publishes_no_new_mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counters = _counters(tmp_path, 2)

    def broken(paths: object) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(seqstore, "_sync_dirs", broken)
    with pytest.raises(OSError):
        renew_all(counters)
    # not durable, so not used: take() reserves (and fsyncs) its own block first
    assert counters[0]._reserved == 0
    monkeypatch.undo()
    assert counters[0].take() == 0
    assert _mark(counters[0].path) == 8


def test_sync_dirs_syncs_real_directories(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    seqstore._sync_dirs([tmp_path / "a" / "x.json", tmp_path / "b" / "y.json"])
    with pytest.raises(OSError):
        seqstore._sync_dirs([tmp_path / "missing" / "z.json"])
