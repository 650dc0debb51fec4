"""The collector's pace during a fleet run (vitalchain/core/gcpace.py, D48): raised while any fleet runs,
the process's own setting back afterwards, a switched-off or slower collector left alone."""

from __future__ import annotations

import gc
import threading

from vitalchain.core.gcpace import GEN0_THRESHOLD, gen0_raised


def test_raised_while_running_and_restored_after_the_last_fleet() -> None:
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with gen0_raised():
            assert gc.get_threshold() == (GEN0_THRESHOLD, 10, 10)
            with gen0_raised():  # a second fleet at once (the demo's, a test's)
                assert gc.get_threshold()[0] == GEN0_THRESHOLD
            assert gc.get_threshold()[0] == GEN0_THRESHOLD  # the first still runs
        assert gc.get_threshold() == (700, 10, 10)
        assert gc.isenabled()
    finally:
        gc.set_threshold(*saved)


def test_restored_after_an_error_and_across_threads() -> None:
    saved = gc.get_threshold()
    try:
        gc.set_threshold(500, 7, 9)
        inside = threading.Event()
        leave = threading.Event()

        def other_fleet() -> None:
            with gen0_raised():
                inside.set()
                leave.wait(10)

        thread = threading.Thread(target=other_fleet)
        thread.start()
        assert inside.wait(10)
        try:
            with gen0_raised():
                raise RuntimeError("a fleet failed")
        except RuntimeError:
            pass
        assert gc.get_threshold()[0] == GEN0_THRESHOLD  # the thread's fleet still runs
        leave.set()
        thread.join(10)
        assert gc.get_threshold() == (500, 7, 9)
    finally:
        gc.set_threshold(*saved)


def test_a_switched_off_or_slower_collector_is_left_alone() -> None:
    saved = gc.get_threshold()
    try:
        for setting in ((0, 10, 10), (50_000, 10, 10)):
            gc.set_threshold(*setting)
            with gen0_raised():
                assert gc.get_threshold() == setting
            assert gc.get_threshold() == setting
        gc.set_threshold(700, 10, 10)
        with gen0_raised():
            gc.set_threshold(1234, 10, 10)  # someone else's choice during the run: kept
        assert gc.get_threshold() == (1234, 10, 10)
    finally:
        gc.set_threshold(*saved)
