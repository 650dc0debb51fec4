"""NEWS2 (National Early Warning Score 2, Royal College of Physicians 2017) from one reading.

The devices measure five of NEWS2's seven parameters.  The other two are not known to the
pipeline, and we score them as the chart's zero rows, which the response states every time:

- level of consciousness: assumed *Alert* (0 points; new confusion, voice, pain or
  unresponsive would score 3);
- air or oxygen: assumed *air* (0 points; supplemental oxygen would score 2).

SpO2 uses Scale 1 (the default; Scale 2 is for patients with confirmed hypercapnic respiratory
failure and needs a clinician's decision the devices do not have).  The score can therefore only
be *under*-estimated by these assumptions, never over-estimated: a clinician seeing a patient
must still assess consciousness and oxygen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ASSUMPTIONS = (
    "consciousness not measured: assumed Alert (0 points)",
    "air or oxygen not recorded: assumed air (0 points)",
    "SpO2 scored on Scale 1",
)


def score_rr(rr: float) -> int:
    if rr <= 8:
        return 3
    if rr <= 11:
        return 1
    if rr <= 20:
        return 0
    if rr <= 24:
        return 2
    return 3


def score_spo2_scale1(spo2: float) -> int:
    if spo2 <= 91:
        return 3
    if spo2 <= 93:
        return 2
    if spo2 <= 95:
        return 1
    return 0


def score_systolic(sys: float) -> int:
    if sys <= 90:
        return 3
    if sys <= 100:
        return 2
    if sys <= 110:
        return 1
    if sys <= 219:
        return 0
    return 3


def score_pulse(hr: float) -> int:
    if hr <= 40:
        return 3
    if hr <= 50:
        return 1
    if hr <= 90:
        return 0
    if hr <= 110:
        return 1
    if hr <= 130:
        return 2
    return 3


def score_temperature(temp_c: float) -> int:
    # The chart's bands are in tenths (35.1-36.0 ...): a value between two printed limits
    # belongs to the band whose upper limit it does not exceed.
    if temp_c <= 35.0:
        return 3
    if temp_c <= 36.0:
        return 1
    if temp_c <= 38.0:
        return 0
    if temp_c <= 39.0:
        return 1
    return 2


@dataclass(frozen=True)
class News2:
    score: int
    risk: str  # "low" | "low-medium" | "medium" | "high"
    response: str
    components: dict[str, int]
    assumptions: tuple[str, ...] = field(default=ASSUMPTIONS)

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "risk": self.risk, "response": self.response,
                "components": dict(self.components), "assumptions": list(self.assumptions)}


def risk_of(total: int, components: Mapping[str, int]) -> tuple[str, str]:
    """Clinical risk band and response from the aggregate and the single-parameter rule."""
    if total >= 7:
        return "high", "emergency response"
    if total >= 5:
        return "medium", "key threshold for urgent response"
    if any(v == 3 for v in components.values()):
        return "low-medium", "urgent ward-based response"
    return "low", "ward-based response" if total else "routine monitoring"


def news2(vitals: Mapping[str, float]) -> News2:
    """NEWS2 of one reading's vitals (``rr``, ``spo2``, ``sys``, ``hr``, ``temp_c``)."""
    components = {
        "respiration_rate": score_rr(vitals["rr"]),
        "spo2_scale1": score_spo2_scale1(vitals["spo2"]),
        "air_or_oxygen": 0,
        "systolic_bp": score_systolic(vitals["sys"]),
        "pulse": score_pulse(vitals["hr"]),
        "consciousness": 0,
        "temperature": score_temperature(vitals["temp_c"]),
    }
    total = sum(components.values())
    risk, response = risk_of(total, components)
    return News2(total, risk, response, components)
