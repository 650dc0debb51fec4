"""Plausible, reproducible vital signs for one simulated patient.

Each patient gets a baseline of their own, a slow drift around it (an Ornstein-Uhlenbeck process,
so values wander for minutes but always come back), measurement noise, and now and then an episode
(tachycardia, desaturation, fever, hypotension) that ramps in, holds and ramps out. Everything is
drawn from one ``random.Random`` seeded by ``(seed, patient_id)``, so a given seed, patient and
sampling interval always produce the same series: tests and demos are repeatable, and two patients
never share a trajectory. Results are clamped to ``vitalchain.core.payload.limits`` so nothing the simulator emits
can be rejected for being physically impossible.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from vitalchain.core.payload.limits import VITAL_LIMITS

Vitals = dict[str, int | float]

# name -> (stationary std of the drift, std of per-sample noise)
_DRIFT_NOISE = {"hr": (4.0, 1.5), "spo2": (0.7, 0.6), "rr": (1.2, 0.8), "temp_c": (0.15, 0.05),
                "sys": (5.0, 3.0), "dia": (3.0, 2.0)}
_DRIFT_NOISE_ROWS = tuple((name, drift, noise) for name, (drift, noise) in _DRIFT_NOISE.items())
_DRIFT_TAU_S = 600.0
_MIN_PULSE_PRESSURE = 10

# kind -> {vital: (low, high) of the peak change}
EPISODES: dict[str, dict[str, tuple[float, float]]] = {
    "tachycardia": {"hr": (35, 70), "rr": (3, 8)},
    "desaturation": {"spo2": (-15, -6), "hr": (5, 15), "rr": (4, 10)},
    "fever": {"temp_c": (1.2, 2.6), "hr": (10, 25), "rr": (2, 5)},
    "hypotension": {"sys": (-45, -25), "dia": (-25, -12), "hr": (10, 25)},
}


@dataclass
class Episode:
    kind: str
    start_s: float
    duration_s: float
    peak: dict[str, float]

    def envelope(self, t_s: float) -> float:
        """0 before and after, ramping linearly to 1 over the first and last fifth."""
        into = t_s - self.start_s
        if into < 0 or into > self.duration_s:
            return 0.0
        ramp = max(self.duration_s * 0.2, 1e-9)
        return min(1.0, into / ramp, (self.duration_s - into) / ramp)

    def over(self, t_s: float) -> bool:
        return t_s > self.start_s + self.duration_s


@dataclass
class Patient:
    """One patient's generator. Call ``sample(dt_s)`` once per reading."""

    patient_id: str
    seed: int = 0
    episodes_per_hour: float = 1.0
    baseline: Vitals = field(init=False)
    t_s: float = field(init=False, default=0.0)
    episode: Episode | None = field(init=False, default=None)
    episodes_seen: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.episodes_per_hour < 0:
            raise ValueError("episodes_per_hour must not be negative")
        self._rng = random.Random(f"vitalchain-physiology/{self.seed}/{self.patient_id}")
        rng = self._rng
        sys_ = rng.uniform(105, 145)
        self.baseline = {
            "hr": min(100.0, max(55.0, rng.gauss(76, 9))),
            "spo2": rng.uniform(95, 99),
            "rr": rng.uniform(12, 18),
            "temp_c": rng.uniform(36.4, 37.1),
            "sys": sys_,
            "dia": min(95.0, max(60.0, sys_ * rng.uniform(0.58, 0.68))),
        }
        self._drift = {name: 0.0 for name in VITAL_LIMITS}
        self._constants: tuple[float, float, float] | None = None

    def _step_episode(self, dt_s: float) -> None:
        if self.episode is not None and self.episode.over(self.t_s):
            self.episode = None
        if self.episode is None and self.episodes_per_hour > 0:
            chance = 1.0 - math.exp(-dt_s * self.episodes_per_hour / 3600.0)
            if self._rng.random() < chance:
                kind = self._rng.choice(sorted(EPISODES))
                peak = {v: self._rng.uniform(lo, hi) for v, (lo, hi) in EPISODES[kind].items()}
                self.episode = Episode(kind, self.t_s, self._rng.uniform(120, 900), peak)
                self.episodes_seen.append(kind)

    def _step_constants(self, dt_s: float) -> tuple[float, float]:
        """``decay`` and ``sqrt(1 - decay**2)`` of the drift for a step of ``dt_s`` (a device samples
        at one interval, so this is computed once, not per reading: the simulator's hot path)."""
        cached = self._constants
        if cached is None or cached[0] != dt_s:
            decay = math.exp(-dt_s / _DRIFT_TAU_S)
            cached = self._constants = (dt_s, decay, math.sqrt(1 - decay * decay))
        return cached[1], cached[2]

    def sample(self, dt_s: float) -> Vitals:
        """Advance the patient by ``dt_s`` seconds and return one reading's vitals."""
        if not dt_s > 0:
            raise ValueError("dt_s must be positive")
        self.t_s += dt_s
        self._step_episode(dt_s)
        decay, spread = self._step_constants(dt_s)
        gauss, drift, baseline = self._rng.gauss, self._drift, self.baseline
        raw: dict[str, float] = {}
        for name, drift_std, noise_std in _DRIFT_NOISE_ROWS:
            drift[name] = drift[name] * decay + drift_std * spread * gauss(0, 1)
            raw[name] = baseline[name] + drift[name] + gauss(0, noise_std)
        if self.episode is not None:
            level = self.episode.envelope(self.t_s)
            for name, change in self.episode.peak.items():
                raw[name] += change * level
        return _plausible(raw)


_BOUNDS = {name: (float(low), float(high)) for name, (low, high) in VITAL_LIMITS.items()}
_DIA_LOW = int(VITAL_LIMITS["dia"][0])


def _clamp(name: str, value: float) -> float:
    low, high = _BOUNDS[name]
    return high if value > high else low if value < low else value


def _plausible(raw: dict[str, float]) -> Vitals:
    sys_ = round(_clamp("sys", raw["sys"]))
    dia = max(_DIA_LOW, min(round(_clamp("dia", raw["dia"])), sys_ - _MIN_PULSE_PRESSURE))
    # the keys in VITAL_LIMITS order, as the published schema lists them
    return {"hr": round(_clamp("hr", raw["hr"])), "spo2": round(_clamp("spo2", raw["spo2"])),
            "rr": round(_clamp("rr", raw["rr"])), "temp_c": round(_clamp("temp_c", raw["temp_c"]), 1),
            "sys": sys_, "dia": dia}
