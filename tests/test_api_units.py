"""Pure parts of the API: NEWS2 bands, interval choice, time parsing, token storage."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from vitalchain.api.news2 import (
    news2,
    score_pulse,
    score_rr,
    score_spo2_scale1,
    score_systolic,
    score_temperature,
)
from vitalchain.api.vitals import choose_interval_s
from vitalchain.core.timeutil import iso_from_us, parse_time_us
from vitalchain.storage.apistore import ApiStore

# (value, expected points) at every band edge of the RCP 2017 NEWS2 chart.
RR = [(5, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (40, 3)]
SPO2 = [(85, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]
SYS = [(70, 3), (90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3)]
PULSE = [(30, 3), (40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2),
         (130, 2), (131, 3)]
TEMP = [(34.0, 3), (35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1), (39.0, 1),
        (39.1, 2), (41.0, 2)]


@pytest.mark.parametrize(("scorer", "bands"), [(score_rr, RR), (score_spo2_scale1, SPO2),
                                               (score_systolic, SYS), (score_pulse, PULSE),
                                               (score_temperature, TEMP)])
def test_news2_parameter_bands(scorer, bands) -> None:
    assert [(v, scorer(v)) for v, _ in bands] == bands


NORMAL = {"rr": 16, "spo2": 97, "sys": 120, "hr": 70, "temp_c": 36.8, "dia": 80}


def test_news2_aggregate_and_risk() -> None:
    ok = news2(NORMAL)
    assert (ok.score, ok.risk) == (0, "low")
    assert any("Alert" in a for a in ok.assumptions) and any("air" in a for a in ok.assumptions)
    assert (news2({**NORMAL, "hr": 95}).score, news2({**NORMAL, "hr": 95}).risk) == (1, "low")
    single = news2({**NORMAL, "rr": 7})  # one parameter scoring 3, total 3
    assert (single.score, single.risk) == (3, "low-medium")
    medium = news2({**NORMAL, "rr": 22, "spo2": 94, "hr": 112})  # 2 + 1 + 2
    assert (medium.score, medium.risk) == (5, "medium")
    high = news2({"rr": 26, "spo2": 90, "sys": 88, "hr": 135, "temp_c": 39.5, "dia": 50})
    assert high.score == 3 + 3 + 3 + 3 + 2 and high.risk == "high"
    assert high.components["consciousness"] == 0 and high.components["air_or_oxygen"] == 0


def test_interval_keeps_points_bounded() -> None:
    hour = 3600 * 1_000_000
    for span in (1, 59 * 1_000_000, hour, 24 * hour, 30 * 24 * hour, 400 * 24 * hour):
        interval = choose_interval_s(0, span)
        assert span / 1e6 / interval <= 500
    assert choose_interval_s(0, hour) == 10  # 3600 s / 500 = 7.2 s -> next nice interval
    assert choose_interval_s(0, hour, max_points=10) == 600


def test_time_parsing() -> None:
    assert parse_time_us("2026-01-01T00:00:00Z") == 1767225600_000000
    assert parse_time_us("2026-01-01T01:00:00+01:00") == 1767225600_000000
    assert parse_time_us("2026-01-01") == 1767225600_000000  # no offset: UTC
    assert iso_from_us(1767225600_000001) == "2026-01-01T00:00:00.000001Z"
    for bad in ("yesterday", "2026-13-01", "'; DROP", "1" * 50):
        with pytest.raises(ValueError):
            parse_time_us(bad)


def test_tokens_are_stored_hashed_and_checked(tmp_path: Path) -> None:
    store = ApiStore(tmp_path / "api.sqlite")
    token = store.add_user("carol", "clinician")
    assert token.startswith("vct_")
    assert store.authenticate(token).name == "carol"
    assert store.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.authenticate("vct_nope_nope") is None and store.authenticate("garbage") is None
    store.disable_user("carol")
    assert store.authenticate(token) is None
    store.close()
    raw = (tmp_path / "api.sqlite").read_bytes()
    assert token.split("_", 2)[2].encode() not in raw
    with sqlite3.connect(tmp_path / "api.sqlite") as db:
        assert db.execute("SELECT count(*) FROM api_users WHERE token_hash LIKE ?",
                          (f"%{token[-10:]}%",)).fetchone()[0] == 0
