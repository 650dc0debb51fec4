"""The written-out ``Patient.sample`` gives bit for bit the series of the per-vital formula it
replaced: the same random draws in the same order, the same float operations, the same generator
state after every sample. The reference below is that formula as it was (before
docs/PERFORMANCE.md's "Device simulator: cheaper per reading"), with ``random.gauss`` itself for
the normals, so it also pins the written-out Box-Muller."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalchain.core.payload.limits import VITAL_LIMITS
from vitalchain.devices.physiology import (
    _DRIFT_NOISE_ROWS,
    _DRIFT_TAU_S,
    _SCRIPT_DAMPING,
    EPISODES,
    Deterioration,
    Episode,
    Patient,
    _plausible,
)


class ReferencePatient(Patient):
    """``Patient`` with the old sample: a loop over the vitals and two ``gauss`` calls each."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._ref_drift = {name: 0.0 for name in VITAL_LIMITS}

    def _ref_step_episode(self, dt_s: float) -> None:
        if self.episode is not None and self.episode.over(self.t_s):
            self.episode = None
        if self.episode is None and self.episodes_per_hour > 0:
            chance = 1.0 - math.exp(-dt_s * self.episodes_per_hour / 3600.0)
            if self._rng.random() < chance:
                kind = self._rng.choice(sorted(EPISODES))
                peak = {v: self._rng.uniform(lo, hi) for v, (lo, hi) in EPISODES[kind].items()}
                self.episode = Episode(kind, self.t_s, self._rng.uniform(120, 900), peak)
                self.episodes_seen.append(kind)

    def sample(self, dt_s: float) -> dict:
        self.t_s += dt_s
        self._ref_step_episode(dt_s)
        decay = math.exp(-dt_s / _DRIFT_TAU_S)
        spread = math.sqrt(1 - decay * decay)
        drift, baseline = self._ref_drift, self.baseline
        raw: dict[str, float] = {}
        for name, drift_std, noise_std in _DRIFT_NOISE_ROWS:
            drift[name] = drift[name] * decay + drift_std * spread * self._rng.gauss(0, 1)
            raw[name] = baseline[name] + drift[name] + self._rng.gauss(0, noise_std)
        if self.episode is not None:
            level = self.episode.envelope(self.t_s)
            for name, change in self.episode.peak.items():
                raw[name] += change * level
        if self.script is not None:
            keep = 1.0 - _SCRIPT_DAMPING * self.script.strength(self.t_s)
            for name, value in self.script.target(self.t_s, baseline).items():
                raw[name] = value + (raw[name] - baseline[name]) * keep
        return _plausible(raw)


def _pair(patient: str, seed: int, episodes: float,
          script: Deterioration | None = None) -> tuple[Patient, Patient]:
    return (Patient(patient, seed, episodes, script),
            ReferencePatient(patient, seed, episodes, script))


def _same_series(fast: Patient, ref: Patient, steps: list[float]) -> None:
    for i, dt_s in enumerate(steps):
        got, want = fast.sample(dt_s), ref.sample(dt_s)
        assert got == want, (i, got, want)
        assert [type(v) for v in got.values()] == [type(v) for v in want.values()]
        assert list(got) == list(want)
        assert fast.t_s == ref.t_s and fast.episode == ref.episode
    assert fast._rng.getstate() == ref._rng.getstate()
    assert fast.episodes_seen == ref.episodes_seen


def test_many_seeds_with_episodes() -> None:
    """300 patients x 600 samples at the rates devices use, episodes frequent enough that most
    series start, hold and end several."""
    episodes = 0
    for seed in range(300):
        rate = (0.4, 1.0, 2.0, 5.0, 10.0)[seed % 5]
        fast, ref = _pair(f"patient-{seed % 17}", seed, episodes=(0.0, 1.0, 60.0, 600.0)[seed % 4])
        _same_series(fast, ref, [1.0 / rate] * 600)
        episodes += len(fast.episodes_seen)
    assert episodes > 100


def test_every_episode_kind_seen_and_identical() -> None:
    kinds: set[str] = set()
    for seed in range(40):
        fast, ref = _pair("p", seed, episodes=3600.0)
        _same_series(fast, ref, [2.0] * 800)
        kinds.update(fast.episodes_seen)
    assert kinds == set(EPISODES)


def test_scripted_deterioration_identical() -> None:
    for seed in range(20):
        fast, ref = _pair("demo", seed, 2.0, Deterioration.over(300))
        _same_series(fast, ref, [0.5] * 700)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**64), patient=st.text(min_size=1, max_size=12),
       episodes=st.floats(0, 5000), steps=st.lists(st.floats(1e-3, 3600.0), min_size=1,
                                                   max_size=200))
def test_any_steps_identical(seed: int, patient: str, episodes: float, steps: list[float]) -> None:
    """Changing intervals (the cached step constants must follow) and episode rates."""
    fast, ref = _pair(patient, seed, episodes)
    _same_series(fast, ref, steps)


def test_changed_episode_rate_is_followed() -> None:
    fast, ref = _pair("p", 3, 0.0)
    _same_series(fast, ref, [1.0] * 100)
    fast.episodes_per_hour = ref.episodes_per_hour = 3600.0
    _same_series(fast, ref, [1.0] * 100)
    assert fast.episodes_seen


@pytest.mark.parametrize("dt_s", [0.0, -1.0, float("nan")])
def test_bad_interval_refused(dt_s: float) -> None:
    with pytest.raises(ValueError):
        Patient("p").sample(dt_s)
