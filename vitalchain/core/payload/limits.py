"""Physical limits of a reading: the single source of truth for the simulator, the JSON Schema and
the bridge.

A value outside these bounds cannot come from a living patient attached to a working sensor, so the
bridge rejects it (to the dead-letter topic) instead of storing it. Keeping the numbers here, and
generating ``reading.schema.json`` from them, means the schema, the simulator and the bridge can
never disagree.
"""

from __future__ import annotations

from typing import Any

# name -> (minimum, maximum), both inclusive.
VITAL_LIMITS: dict[str, tuple[int | float, int | float]] = {
    "hr": (20, 300),  # heart rate, beats per minute
    "spo2": (50, 100),  # peripheral oxygen saturation, percent
    "rr": (2, 80),  # respiratory rate, breaths per minute
    "temp_c": (25.0, 45.0),  # body temperature, degrees Celsius (one decimal)
    "sys": (40, 300),  # systolic blood pressure, mmHg
    "dia": (20, 200),  # diastolic blood pressure, mmHg (always below systolic)
}
INTEGER_VITALS = ("hr", "spo2", "rr", "sys", "dia")
DECIMAL_VITALS = ("temp_c",)
VITAL_NAMES = tuple(VITAL_LIMITS)

MIN_BATCH = 1
MAX_BATCH = 100

# seq and ts_us must survive a round trip through any JSON parser (IEEE doubles): 2**53 - 1.
MAX_JSON_INT = 2**53 - 1
# ts_us below this (2001-09-09) is a clock in seconds or milliseconds, or an unset RTC.
MIN_TS_US = 1_000_000_000_000_000

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def vital_violations(vitals: dict[str, Any]) -> list[str]:
    """What is wrong with one ``vitals`` object (empty when it is plausible).

    JSON Schema checks each bound; it cannot compare two fields, so ``dia < sys`` lives here and
    callers must run this after the schema.
    """
    problems: list[str] = []
    for name, (low, high) in VITAL_LIMITS.items():
        value = vitals.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{name} missing or not a number")
        elif not low <= value <= high:
            problems.append(f"{name}={value} outside {low}..{high}")
    sys_, dia = vitals.get("sys"), vitals.get("dia")
    if (isinstance(sys_, int | float) and isinstance(dia, int | float)
            and not isinstance(sys_, bool) and not isinstance(dia, bool) and dia >= sys_):
        problems.append(f"dia={dia} not below sys={sys_}")
    return problems
