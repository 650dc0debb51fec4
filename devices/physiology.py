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
        self._drift = [0.0] * len(_DRIFT_NOISE_ROWS)  # in _DRIFT_NOISE_ROWS order
        # (dt_s, episodes_per_hour, decay, episode chance, six drift_std * spread): see _step
        self._constants: tuple[float, ...] = (0.0,)

    def _start_episode(self) -> Episode:
        """The draws after an episode's chance came up: its kind, peaks and length (rare)."""
        rng = self._rng
        kind = rng.choice(sorted(EPISODES))
        peak = {v: rng.uniform(lo, hi) for v, (lo, hi) in EPISODES[kind].items()}
        episode = self.episode = Episode(kind, self.t_s, rng.uniform(120, 900), peak)
        self.episodes_seen.append(kind)
        return episode

    def _step(self, dt_s: float) -> tuple[float, ...]:
        """Everything of a step that depends on ``dt_s`` (and ``episodes_per_hour``) alone: the
        drift's ``decay``, the chance an episode starts, and each vital's ``drift_std * spread``
        with ``spread = sqrt(1 - decay**2)``. A device samples at one interval, so this runs once,
        not per reading; each value is the very float the per-sample formula gave
        (``drift_std * spread * z`` is ``(drift_std * spread) * z``, left to right)."""
        cached = self._constants
        if cached[0] == dt_s and cached[1] == self.episodes_per_hour:
            return cached
        decay = math.exp(-dt_s / _DRIFT_TAU_S)
        spread = math.sqrt(1 - decay * decay)
        chance = 1.0 - math.exp(-dt_s * self.episodes_per_hour / 3600.0)
        cached = self._constants = (dt_s, self.episodes_per_hour, decay, chance,
                                    *(drift_std * spread for _, drift_std, _ in _DRIFT_NOISE_ROWS))
        return cached

    def sample(self, dt_s: float) -> Vitals:
        """Advance the patient by ``dt_s`` seconds and return one reading's vitals.

        The simulator's hot path (a quarter of its CPU per reading in a profile at 2,000 devices,
        docs/PERFORMANCE.md): written out for the six vitals, with every random draw in the same
        order and every float operation the same as the per-vital loop it replaced (kept as
        ``tests/test_devices_physiology.py``'s reference, which compares series on many seeds).
        """
        if not dt_s > 0:
            raise ValueError("dt_s must be positive")
        t_s = self.t_s = self.t_s + dt_s
        episode = self.episode
        if episode is not None and t_s > episode.start_s + episode.duration_s:
            episode = self.episode = None
        rng = self._rng
        _, _, decay, chance, s_hr, s_spo2, s_rr, s_temp, s_sys, s_dia = self._step(dt_s)
        if episode is None and self.episodes_per_hour > 0 and rng.random() < chance:
            episode = self._start_episode()
        # Twelve standard normals, exactly as twelve ``rng.gauss(0, 1)`` (see _normals): six
        # Box-Muller pairs, the generator's cached spare first when it holds one.
        rand = rng.random
        spare = rng.gauss_next  # type: ignore[attr-defined]
        z: list[float] = [] if spare is None else [spare]
        for _ in range(6):
            x2pi = rand() * _TWOPI
            g2rad = _sqrt(-2.0 * _log(1.0 - rand()))
            z.append(_cos(x2pi) * g2rad)
            z.append(_sin(x2pi) * g2rad)
        rng.gauss_next = z.pop() if spare is not None else None  # type: ignore[attr-defined]
        d_hr, d_spo2, d_rr, d_temp, d_sys, d_dia = self._drift
        # exactly ``drift * decay + drift_std * spread * gauss(0, 1)``, ``base + drift +
        # gauss(0, noise_std)``; ``0.0 + x`` is the ``mu + ...`` of gauss (it turns -0.0 into 0.0)
        d_hr = d_hr * decay + s_hr * (0.0 + z[0])
        d_spo2 = d_spo2 * decay + s_spo2 * (0.0 + z[2])
        d_rr = d_rr * decay + s_rr * (0.0 + z[4])
        d_temp = d_temp * decay + s_temp * (0.0 + z[6])
        d_sys = d_sys * decay + s_sys * (0.0 + z[8])
        d_dia = d_dia * decay + s_dia * (0.0 + z[10])
        self._drift = [d_hr, d_spo2, d_rr, d_temp, d_sys, d_dia]
        base = self.baseline
        hr = base["hr"] + d_hr + (0.0 + z[1] * _NOISE_HR)
        spo2 = base["spo2"] + d_spo2 + (0.0 + z[3] * _NOISE_SPO2)
        rr = base["rr"] + d_rr + (0.0 + z[5] * _NOISE_RR)
        temp_c = base["temp_c"] + d_temp + (0.0 + z[7] * _NOISE_TEMP)
        sys_ = base["sys"] + d_sys + (0.0 + z[9] * _NOISE_SYS)
        dia = base["dia"] + d_dia + (0.0 + z[11] * _NOISE_DIA)
        if episode is not None or self.script is not None:
            raw = {"hr": hr, "spo2": spo2, "rr": rr, "temp_c": temp_c, "sys": sys_, "dia": dia}
            if episode is not None:
                level = episode.envelope(t_s)
                for name, change in episode.peak.items():
                    raw[name] += change * level
            if self.script is not None:
                # The baseline moves to the script's target; drift, noise and episodes ride on
                # top, shrunk as the script takes hold so the score stays in the script's band.
                keep = 1.0 - _SCRIPT_DAMPING * self.script.strength(t_s)
                for name, value in self.script.target(t_s, base).items():
                    raw[name] = value + (raw[name] - base[name]) * keep
            return _plausible(raw)
        # _plausible, written out (the same clamps and roundings)
        sys_ = round(_SYS_HI if sys_ > _SYS_HI else _SYS_LO if sys_ < _SYS_LO else sys_)
        dia = round(_DIA_HI if dia > _DIA_HI else _DIA_LO_F if dia < _DIA_LO_F else dia)
        top = sys_ - _MIN_PULSE_PRESSURE  # min and max of ints, written out
        dia = top if top < dia else dia
        dia = dia if dia > _DIA_LOW else _DIA_LOW
        return {"hr": round(_HR_HI if hr > _HR_HI else _HR_LO if hr < _HR_LO else hr),
                "spo2": round(_SPO2_HI if spo2 > _SPO2_HI else _SPO2_LO if spo2 < _SPO2_LO else spo2),
                "rr": round(_RR_HI if rr > _RR_HI else _RR_LO if rr < _RR_LO else rr),
                "temp_c": round(_TEMP_HI if temp_c > _TEMP_HI else
                                _TEMP_LO if temp_c < _TEMP_LO else temp_c, 1),
                "sys": sys_, "dia": dia}


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
(_HR_LO, _HR_HI), (_SPO2_LO, _SPO2_HI), (_RR_LO, _RR_HI), (_TEMP_LO, _TEMP_HI), \
    (_SYS_LO, _SYS_HI), (_DIA_LO_F, _DIA_HI) = (_BOUNDS[name] for name, _, _ in _DRIFT_NOISE_ROWS)
_NOISE_HR, _NOISE_SPO2, _NOISE_RR, _NOISE_TEMP, _NOISE_SYS, _NOISE_DIA = (
    noise for _, _, noise in _DRIFT_NOISE_ROWS)
_sqrt, _log, _cos, _sin = math.sqrt, math.log, math.cos, math.sin


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
