"""The stream worker's collector pace (vitalchain/core/gcpace.py, D51): raised for the worker process,
a switched-off or already slower collector left alone, nothing else of the collector changed."""

from __future__ import annotations

import gc

import pytest

from vitalchain.core.gcpace import GEN0_THRESHOLD, raise_gen0


@pytest.fixture
def saved_threshold():
    saved = gc.get_threshold()
    enabled = gc.isenabled()
    yield
    gc.set_threshold(*saved)
    if enabled:
        gc.enable()


@pytest.mark.usefixtures("saved_threshold")
def test_raised_from_the_default_keeping_the_older_generations() -> None:
    gc.set_threshold(700, 10, 10)
    assert raise_gen0() == (GEN0_THRESHOLD, 10, 10)
    assert gc.get_threshold() == (GEN0_THRESHOLD, 10, 10)
    assert gc.isenabled()
    gc.set_threshold(500, 7, 9)
    assert raise_gen0() == (GEN0_THRESHOLD, 7, 9)


@pytest.mark.usefixtures("saved_threshold")
@pytest.mark.parametrize("setting", [(0, 10, 10), (GEN0_THRESHOLD, 10, 10),
                                     (50_000, 20, 10)])
def test_a_switched_off_or_slower_collector_is_left_alone(setting: tuple[int, int, int]) -> None:
    gc.set_threshold(*setting)
    assert raise_gen0() == setting
    assert gc.get_threshold() == setting


@pytest.mark.usefixtures("saved_threshold")
def test_cycles_are_still_collected_at_the_stream_pace() -> None:
    """Only the pace changes: garbage cycles made under it are found by a collection."""
    gc.set_threshold(700, 10, 10)
    raise_gen0()

    class Node:
        pass

    gc.collect()
    for _ in range(100):
        a, b = Node(), Node()
        a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 200
