"""Simulated physiology: within physical limits always, reproducible, patient-specific; and the
per-device seq counter never repeats."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalchain.core.payload.limits import VITAL_LIMITS, vital_violations
from vitalchain.devices.physiology import EPISODES, Deterioration, Patient, _normals
from vitalchain.devices.seqstore import SeqCounter


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), rate=st.sampled_from([0.05, 0.5, 1.0, 10.0]),
       episodes=st.floats(0, 120), patient=st.text("abcdef0123", min_size=1, max_size=8))
def test_always_within_limits(seed: int, rate: float, episodes: float, patient: str) -> None:
    person = Patient(patient, seed=seed, episodes_per_hour=episodes)
    for _ in range(400):
        vitals = person.sample(1.0 / rate)
        assert vital_violations(vitals) == [], vitals
        assert isinstance(vitals["temp_c"], float) and round(vitals["temp_c"], 1) == vitals["temp_c"]
        assert all(type(vitals[k]) is int for k in VITAL_LIMITS if k != "temp_c")


def test_long_run_stays_plausible_and_has_episodes() -> None:
    """Six simulated hours at 1 Hz with frequent episodes, for a few patients."""
    for n in range(3):
        person = Patient(f"patient-{n}", seed=11, episodes_per_hour=4)
        hr = []
        for _ in range(6 * 3600):
            vitals = person.sample(1.0)
            assert vital_violations(vitals) == []
            hr.append(vitals["hr"])
        assert person.episodes_seen, "no episode in six hours at 4 per hour"
        assert set(person.episodes_seen) <= set(EPISODES)
        # Drift and episodes move the heart rate, but the median stays near the baseline.
        assert abs(statistics.median(hr) - person.baseline["hr"]) < 15
        assert max(hr) - min(hr) > 10


def test_deterministic_and_patient_specific() -> None:
    def series(patient: str, seed: int) -> list[dict]:
        person = Patient(patient, seed=seed, episodes_per_hour=10)
        return [person.sample(1.0) for _ in range(500)]

    assert series("p1", 7) == series("p1", 7)
    assert series("p1", 7) != series("p1", 8)
    assert series("p1", 7) != series("p2", 7)
    assert Patient("p1", 7).baseline != Patient("p2", 7).baseline


def test_episode_changes_the_vitals() -> None:
    person = Patient("p-tachy", seed=1, episodes_per_hour=3600)  # one starts at once
    before_baseline = person.baseline["hr"]
    person.sample(1.0)
    assert person.episode is not None
    episode = person.episode
    peak_time = episode.start_s + episode.duration_s / 2
    while person.t_s < peak_time:
        vitals = person.sample(1.0)
    assert episode.envelope(person.t_s) == 1.0
    if "hr" in episode.peak:
        assert abs(vitals["hr"] - (before_baseline + episode.peak["hr"])) < 25


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Patient("p", episodes_per_hour=-1)
    with pytest.raises(ValueError):
        Patient("p").sample(0)


def test_seq_counter_survives_clean_restart_and_crash(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    counter = SeqCounter(path, block=10)
    assert [counter.take() for _ in range(3)] == [0, 1, 2]
    counter.close()
    assert json.loads(path.read_text()) == {"next_seq": 3}
    restarted = SeqCounter(path, block=10)
    assert restarted.take() == 3  # a clean stop leaves no gap
    # crash: no close(); the reservation on disk is above everything handed out
    used = [restarted.take() for _ in range(15)]
    after_crash = SeqCounter(path, block=10)
    assert after_crash.peek > max(used)
    assert after_crash.take() > max(used)


def test_seq_counter_renews_ahead_so_take_never_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next block is reserved before the current one runs out (off the event loop in the
    simulator); the disk mark is always above every seq handed out, and close is still exact."""
    path = tmp_path / "dev.json"
    counter = SeqCounter(path, block=10)
    counter.renew()  # what the fleet does for every device before it starts
    writes: list[tuple[str, int]] = []
    where = ["renew"]
    real_write = counter._write
    monkeypatch.setattr(counter, "_write", lambda value: (writes.append((where[0], value)), real_write(value)))
    handed = []
    for _ in range(95):
        where[0] = "take"
        handed.append(counter.take())
        where[0] = "renew"
        if counter.wants_renewal():
            assert not counter.wants_renewal()  # asked for once until it ran
            counter.renew()
        assert json.loads(path.read_text())["next_seq"] > handed[-1]
    assert handed == list(range(95))
    assert len(writes) >= 9 and all(w == "renew" for w, _ in writes), writes  # take() never wrote
    # without renewals take() reserves by itself, synchronously
    lazy = SeqCounter(tmp_path / "lazy.json", block=10)
    assert [lazy.take() for _ in range(25)] == list(range(25))
    assert json.loads((tmp_path / "lazy.json").read_text())["next_seq"] == 30
    counter.close()
    assert json.loads(path.read_text()) == {"next_seq": 95}
    counter.renew()  # a renewal that comes after close changes nothing
    assert json.loads(path.read_text()) == {"next_seq": 95}


def test_seq_counter_refuses_corrupt_state(tmp_path: Path) -> None:
    path = tmp_path / "dev.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        SeqCounter(path)
    path.write_text('{"next_seq": -4}')
    with pytest.raises(ValueError):
        SeqCounter(path)


def _scripted_run(patient: str, seed: int, script: Deterioration,
                  seconds: int) -> tuple[list[dict], list[str]]:
    person = Patient(patient, seed=seed, episodes_per_hour=0, script=script)
    vitals, stages = [], []
    for _ in range(seconds):
        vitals.append(person.sample(1.0))
        stages.append(script.stage(person.t_s))
    return vitals, stages


def test_scripted_deterioration_goes_amber_then_red() -> None:
    """The demo's declining patient: NEWS2 medium (5-6) on the plateau, high (>= 7) at the end,
    whatever the patient's own baseline."""
    from vitalchain.api.news2 import news2

    script = Deterioration(60, 240, 480)
    for seed in range(3):
        for patient in ("patient-a", "patient-b", "patient-c", "p9"):
            vitals, stages = _scripted_run(patient, seed, script, 700)
            amber = [news2(v) for v, s in zip(vitals, stages, strict=True) if s == "amber"]
            red = [news2(v) for v, s in zip(vitals, stages, strict=True) if s == "red"]
            assert len(amber) > 50 and len(red) > 150
            medium = sum(n.risk == "medium" for n in amber) / len(amber)
            assert medium >= 0.95, (seed, patient, [n.score for n in amber])
            assert all(n.score >= 7 and n.risk == "high" for n in red), (seed, patient)
            assert all(vital_violations(v) == [] for v in vitals)


def test_script_changes_nothing_before_it_starts_nor_anyone_else() -> None:
    """A script draws no random numbers: the series before it starts is the unscripted one, and
    the other patients of the same seed are exactly as they were (tests and demos compare them)."""
    script = Deterioration(100, 200, 300)
    plain = Patient("p1", seed=5)
    scripted = Patient("p1", seed=5, script=script)
    before = [(plain.sample(1.0), scripted.sample(1.0)) for _ in range(100)]
    assert all(a == b for a, b in before)
    after = [(plain.sample(1.0), scripted.sample(1.0)) for _ in range(300)]
    assert any(a != b for a, b in after)
    assert scripted.baseline == plain.baseline


def test_deterioration_schedule() -> None:
    script = Deterioration.over(60)
    assert (script.start_s, script.amber_s, script.red_s) == (6, 24, 48)
    assert [script.stage(t) for t in (0, 10, 25, 40, 60)] == \
        ["baseline", "worsening", "amber", "worse", "red"]
    assert Deterioration.over(60, offset_s=-60).stage(0) == "red"
    with pytest.raises(ValueError):
        Deterioration(10, 5, 20)
    with pytest.raises(ValueError):
        Deterioration.over(0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 3), st.integers(0, 30))
def test_normals_are_exactly_gauss_draws(seed: int, before: int, n: int) -> None:
    """The written-out Box-Muller gives the very numbers (and leaves the very generator state,
    the cached spare included) that ``n`` calls of ``random.gauss(0, 1)`` do."""
    ours, reference = random.Random(seed), random.Random(seed)
    for _ in range(before):  # an odd number leaves a spare in gauss_next
        ours.gauss(76, 9)
        reference.gauss(76, 9)
    assert _normals(ours, n) == [reference.gauss(0, 1) for _ in range(n)]
    assert ours.getstate() == reference.getstate()
