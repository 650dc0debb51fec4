"""Plausible, reproducible vital signs for one simulated patient.

Each patient gets a baseline of their own, a slow drift around it (an Ornstein-Uhlenbeck process,
so values wander for minutes but always come back), measurement noise, and now and then an episode
(tachycardia, desaturation, fever, hypotension) that ramps in, holds and ramps out. Everything is
drawn from one ``random.Random`` seeded by ``(seed, patient_id)``, so a given seed, patient and
sampling interval always produce the same series: tests and demos are repeatable, and two patients
never share a trajectory. One patient can also be given a scripted :class:`Deterioration` (the demo's
patient whose NEWS2 goes amber, then red, on a schedule); it draws no random numbers, so it changes
nothing in anyone else's series. Results are clamped to ``vitalchain.core.payload.limits`` so
nothing the simulator emits can be rejected for being physically impossible.
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
_SCRIPT_DAMPING = 0.6  # share of drift/noise removed once a scripted deterioration is under way
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


# Where a scripted deterioration takes the vitals (drift and noise still ride on top). Chosen so
# NEWS2 (api/news2.py, Scale 1) is robustly in a band: amber = hr 1 + spo2 1 + rr 2 + temp 1 +
# sys 0 = 5 (6 when SpO2 noise dips to 93); red = hr 2 + spo2 3 + rr 3 + temp 1 + sys 2 = 11.
AMBER_TARGET: dict[str, float] = {"hr": 100, "spo2": 94.4, "rr": 22.5, "temp_c": 38.5,
                                  "sys": 128, "dia": 78}
RED_TARGET: dict[str, float] = {"hr": 124, "spo2": 88.5, "rr": 28, "temp_c": 38.8,
                                "sys": 96, "dia": 58}


@dataclass(frozen=True)
class Deterioration:
    """A scripted decline: from the patient's own baseline to NEWS2 amber, a plateau, then red.

    Times are seconds of the patient's clock (``Patient.t_s``): the vitals leave the baseline at
    ``start_s``, reach the amber targets at ``amber_s``, hold them for the first third of the way
    to ``red_s``, reach the red targets at ``red_s`` and stay there. A clinician watching the demo
    sees the alarm path: the score's colour change, then the emergency band. Deterministic and
    free of random draws, so adding it to one patient leaves every other series as it was.
    """

    start_s: float
    amber_s: float
    red_s: float

    def __post_init__(self) -> None:
        if not self.start_s < self.amber_s < self.red_s:
            raise ValueError("a deterioration needs start_s < amber_s < red_s")

    @classmethod
    def over(cls, seconds: float, offset_s: float = 0.0) -> Deterioration:
        """A schedule fitted to a run of ``seconds``: starts at 10 %, amber by 40 %, red by 80 %."""
        if not seconds > 0:
            raise ValueError("seconds must be positive")
        return cls(offset_s + 0.1 * seconds, offset_s + 0.4 * seconds, offset_s + 0.8 * seconds)

    def stage(self, t_s: float) -> str:
        """``baseline``, ``worsening``, ``amber``, ``worse`` or ``red`` at ``t_s``."""
        hold_end = self.amber_s + (self.red_s - self.amber_s) / 3
        if t_s <= self.start_s:
            return "baseline"
        if t_s < self.amber_s:
            return "worsening"
        if t_s <= hold_end:
            return "amber"
        return "worse" if t_s < self.red_s else "red"

    def strength(self, t_s: float) -> float:
        """0 before the script starts, rising to 1 at ``amber_s`` and staying there."""
        return min(1.0, max(0.0, (t_s - self.start_s) / (self.amber_s - self.start_s)))

    def target(self, t_s: float, baseline: Vitals) -> dict[str, float]:
        """The vitals the script asks for at ``t_s``: piecewise linear between its key frames."""
        hold_end = self.amber_s + (self.red_s - self.amber_s) / 3
        if t_s <= self.start_s:
            return {k: float(v) for k, v in baseline.items()}
        if t_s < self.amber_s:
            low, high, w = baseline, AMBER_TARGET, (t_s - self.start_s) / (self.amber_s - self.start_s)
        elif t_s <= hold_end:
            return dict(AMBER_TARGET)
        elif t_s < self.red_s:
            low, high, w = AMBER_TARGET, RED_TARGET, (t_s - hold_end) / (self.red_s - hold_end)
        else:
            return dict(RED_TARGET)
        return {k: low[k] + (high[k] - low[k]) * w for k in baseline}


@dataclass
class Patient:
    """One patient's generator. Call ``sample(dt_s)`` once per reading."""

    patient_id: str
    seed: int = 0
    episodes_per_hour: float = 1.0
    script: Deterioration | None = None
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
        drift, baseline = self._drift, self.baseline
        normals = _normals(self._rng, _NORMALS_PER_SAMPLE)
        raw: dict[str, float] = {}
        i = 0
        for name, drift_std, noise_std in _DRIFT_NOISE_ROWS:
            # exactly gauss(0, 1) and gauss(0, noise_std): ``mu + z * sigma``
            drift[name] = drift[name] * decay + drift_std * spread * (0 + normals[i] * 1)
            raw[name] = baseline[name] + drift[name] + (0 + normals[i + 1] * noise_std)
            i += 2
        if self.episode is not None:
            level = self.episode.envelope(self.t_s)
            for name, change in self.episode.peak.items():
                raw[name] += change * level
        if self.script is not None:
            # The baseline moves to the script's target; drift, noise and episodes ride on top,
            # shrunk as the script takes hold so the score stays in the band the script is in.
            keep = 1.0 - _SCRIPT_DAMPING * self.script.strength(self.t_s)
            for name, value in self.script.target(self.t_s, baseline).items():
                raw[name] = value + (raw[name] - baseline[name]) * keep
        return _plausible(raw)


_NORMALS_PER_SAMPLE = 2 * len(_DRIFT_NOISE_ROWS)
_TWOPI = 2.0 * math.pi


def _normals(rng: random.Random, n: int) -> list[float]:
    """``n`` standard normal draws, the very numbers ``n`` calls of ``rng.gauss(0, 1)`` return
    (CPython's Box-Muller pair and its ``gauss_next`` cache, written out): twelve Python calls per
    reading were a fifth of the physiology model's cost, and the series must stay bit for bit
    what it was (tests/test_devices_physiology.py compares against ``gauss``)."""
    rand, log, sqrt, cos, sin = rng.random, math.log, math.sqrt, math.cos, math.sin
    out: list[float] = []
    spare = rng.gauss_next  # type: ignore[attr-defined]
    if spare is not None and n > 0:
        out.append(spare)
        spare = None
    while len(out) < n:
        x2pi = rand() * _TWOPI
        g2rad = sqrt(-2.0 * log(1.0 - rand()))
        out.append(cos(x2pi) * g2rad)
        spare = sin(x2pi) * g2rad
        if len(out) < n:
            out.append(spare)
            spare = None
    rng.gauss_next = spare  # type: ignore[attr-defined]
    return out


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
