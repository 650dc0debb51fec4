"""The Faust stream end to end on the real services: exactly once, roots match, crashes."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.common_support import wait_until
from tests.stream_support import (
    Worker,
    all_done,
    batched_values,
    check_sealed,
    dead_letters,
    make_input,
    produce,
    produce_values,
)
from vitalchain.app.stack.topology import ensure_database
from vitalchain.config import Settings
from vitalchain.storage.ledger import Ledger

pytestmark = pytest.mark.e2e


def stream_settings(isolated: Settings, tmp_path: Path, tag: str = "") -> Settings:
    return isolated.with_overrides(
        window_seconds=2.0, idle_seal_seconds=2.5,
        stream_app_id=f"vc-test-{uuid.uuid4().hex[:8]}",
        influx_db=isolated.influx_db + tag,
        ledger_file=str(tmp_path / f"ledger{tag}.sqlite"))


def run_to_completion(settings: Settings, workers: list[Worker], highwaters: dict[int, int],
                      timeout: float = 60) -> None:

    def done() -> bool:
        for w in workers:
            assert w.alive() or w.proc.returncode == -signal.SIGKILL, w.tail()
        return all_done(settings, highwaters)

    try:
        wait_until(done, timeout, "stream did not seal every record", interval=0.3)
    except AssertionError:
        for w in workers:
            print(w.tail())
        raise


def test_every_reading_sealed_exactly_once(isolated: Settings, tmp_path: Path) -> None:
    settings = stream_settings(isolated, tmp_path)
    inp = make_input(devices=8, seconds=12)
    ends = produce(settings, inp.records)
    started = time.monotonic()
    worker = Worker(settings, "a", tmp_path)
    try:
        run_to_completion(settings, [worker], ends)
        elapsed = time.monotonic() - started
    finally:
        worker.kill(signal.SIGTERM)
    headers = check_sealed(settings, inp)
    assert any(not h["idle_cut"] for h in headers.values()), "no event-time cut happened"
    letters = dead_letters(settings, inp.conflicts)
    assert len(letters) == inp.conflicts
    assert {x["reason"] for x in letters} == {"seq_conflict"}
    assert all(x["stage"] == "stream" and x["topic"] == settings.raw_topic for x in letters)
    print(f"sealed {len(inp.unique)} readings in {len(headers)} windows; "
          f"{elapsed:.1f}s from worker start incl. startup and idle seal")
    assert "duplicates=" in worker.log_path.read_text()


def kill_mid_run(settings: Settings, worker: Worker, ends: dict[int, int], windows: int) -> None:
    """SIGKILL ``worker`` once ``windows`` windows are sealed, and check work was left over."""
    def sealed_some() -> bool:
        ledger = Ledger(settings.ledger_path)
        try:
            return ledger.log_size() >= windows
        finally:
            ledger.close()

    wait_until(sealed_some, 60, f"{windows} windows sealed before the kill", interval=0.02)
    worker.kill(signal.SIGKILL)
    assert not all_done(settings, ends), "the worker finished before it could be killed"


def event_time_windows(headers: dict[str, dict]) -> dict[str, str]:
    return {k: h["root"] for k, h in headers.items() if not h["idle_cut"]}


def crash_and_reference(crash: Settings, reference: Settings, ends: dict[int, int], inp: Any,
                        tmp_path: Path, windows: int) -> tuple[Any, Any]:
    """One worker on ``crash`` SIGKILLed after ``windows`` windows and a second one finishing,
    one uncrashed worker on ``reference``; both checked exactly once. (crashed, clean) seals."""
    ref_worker = Worker(reference, "ref", tmp_path)
    first = Worker(crash, "c1", tmp_path)
    workers = [ref_worker, first]
    try:
        kill_mid_run(crash, first, ends, windows=windows)
        second = Worker(crash, "c2", tmp_path)
        workers.append(second)
        run_to_completion(crash, [second], ends)
        run_to_completion(reference, [ref_worker], ends)
    finally:
        for w in workers:
            if w.alive():
                w.kill(signal.SIGTERM)
    return check_sealed(crash, inp), check_sealed(reference, inp)


def assert_same_windows(crashed: dict[str, dict], clean: dict[str, dict], at_least: int) -> None:
    """The crashed run sealed the windows (ids and roots) of the uncrashed one, at least
    ``at_least`` cut by event time, and the same final idle cuts."""
    assert len(event_time_windows(clean)) >= at_least
    assert event_time_windows(crashed) == event_time_windows(clean)
    assert set(crashed) == set(clean), "final (idle) cuts differ"


def assert_conflicts_lettered(settings: Settings, inp: Any, detail_prefix: str) -> None:
    """Every seq conflict of ``inp`` was dead-lettered once, named from ``detail_prefix``."""
    letters = dead_letters(settings, inp.conflicts)
    assert sorted(x["reason"] for x in letters) == ["seq_conflict"] * inp.conflicts
    assert all(x["detail"].startswith(detail_prefix) for x in letters)


def test_sigkill_and_restart_reproduces_the_same_windows(isolated: Settings,
                                                         tmp_path: Path) -> None:
    crash = stream_settings(isolated, tmp_path, "c")
    reference = stream_settings(isolated, tmp_path, "r")
    for s in (crash, reference):
        ensure_database(s)
    inp = make_input(devices=8, seconds=16)
    ends = produce(crash, inp.records)
    crashed, clean = crash_and_reference(crash, reference, ends, inp, tmp_path, windows=4)
    assert_same_windows(crashed, clean, at_least=8)


def test_sigkill_with_batched_records_reproduces_the_same_windows(isolated: Settings,
                                                                  tmp_path: Path) -> None:
    """The same crash story with records of version 2 (one per device message, as the bridge
    writes them): exactly once, and the windows and roots of an uncrashed run."""
    crash = stream_settings(isolated, tmp_path, "bc")
    reference = stream_settings(isolated, tmp_path, "br")
    for s in (crash, reference):
        ensure_database(s)
    inp = make_input(devices=8, seconds=16)
    values = batched_values(inp.records)
    assert len(values) < len(inp.records) // 3
    ends = produce_values(crash, values)
    crashed, clean = crash_and_reference(crash, reference, ends, inp, tmp_path, windows=2)
    assert_same_windows(crashed, clean, at_least=4)
    assert_conflicts_lettered(crash, inp, "readings[")  # named in its record


def test_two_workers_one_killed_mid_run(isolated: Settings, tmp_path: Path) -> None:
    settings = stream_settings(isolated, tmp_path)
    inp = make_input(devices=8, seconds=16)
    ends = produce(settings, inp.records)
    a = Worker(settings, "a", tmp_path)
    b = Worker(settings, "b", tmp_path)
    try:
        kill_mid_run(settings, a, ends, windows=4)
        run_to_completion(settings, [b], ends, timeout=90)
    finally:
        for w in (a, b):
            if w.alive():
                w.kill(signal.SIGTERM)
    headers = check_sealed(settings, inp)
    assert len(event_time_windows(headers)) >= 8
