"""The clinician's and the auditor's screens as people see them, in a real headless Chromium.

Realistic data (the simulator's physiology, one reading every 2 s for 30 min): a patient who
deteriorates (NEWS2 amber, then red), one who stays amber, and a stable one whose device was
off for three minutes. The test asserts what the screenshots show: the latest value of each
vital as a number with unit and time (local, zone named), the NEWS2 breakdown rows, charts on
clinical y-ranges shaded by NEWS2 bands, a break where there is no data, what a point is, and
only the cards the role may use. The screenshots in docs/img come from this test (artifacts/).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.common_support import wait_until
from tests.test_api_anchored import anchor_all
from tests.test_api_http import seal
from tests.test_dashboard_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SECOND_US,
    keep_screenshot,
    needs_chromium,
    reading,
    serve,
    sign_in,
)
from vitalchain.anchor.deploy import deploy
from vitalchain.api.news2 import news2, score_pulse, score_rr, score_spo2_scale1, score_systolic, score_temperature
from vitalchain.config import Settings
from vitalchain.devices.physiology import Deterioration, Patient
from vitalchain.storage.apistore import ApiStore
from vitalchain.storage.ledger import Ledger

playwright_api = pytest.importorskip("playwright.sync_api")

APP_JS = Path(__file__).resolve().parents[1] / "api" / "static" / "app.js"
STEP_S = 2
SPAN_S = 30 * 60
GAP_S = (14 * 60, 11 * 60)  # pat-stable's device was off from 14 to 11 minutes ago
TIMEZONE = "Europe/Berlin"
ZONE = r"(CET|CEST|GMT\+1|GMT\+2)"
HR_RED = (192, 57, 43)  # the heart-rate line's colour (COLOURS.hr in app.js)


def simulated(patient_id: str, device: str, seed: int, now_us: int, script: Deterioration | None,
              gap: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """A reading every ``STEP_S`` over the last ``SPAN_S`` from the simulator's physiology."""
    person = Patient(patient_id, seed=seed, episodes_per_hour=0, script=script)
    out = []
    for i in range(SPAN_S // STEP_S):
        vitals = person.sample(STEP_S)
        ago_s = SPAN_S - i * STEP_S
        if gap and gap[1] < ago_s <= gap[0]:
            continue
        out.append(reading(device, patient_id, len(out), now_us - ago_s * SECOND_US, vitals))
    return out


def seed_ward(settings: Settings, now_us: int) -> dict[str, list[dict[str, Any]]]:
    ward = {
        # amber from 18 min into the half hour, red from 27 min: red now
        "pat-decline": simulated("pat-decline", "dev-decline", 1, now_us, Deterioration(600, 1080, 1620)),
        # amber from 20 min on, red not before 60 min: amber now
        "pat-amber": simulated("pat-amber", "dev-amber", 2, now_us, Deterioration(300, 1200, 3600)),
        "pat-stable": simulated("pat-stable", "dev-stable", 3, now_us, None, GAP_S),
    }
    # the device registry as provisioning leaves it (the API takes consent for devices from it)
    registry = settings.state_dir / "devices" / "registry.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(json.dumps({rows[0]["device_id"]: p for p, rows in ward.items()}) + "\n")
    everything = sorted((r for rows in ward.values() for r in rows), key=lambda r: r["ts_us"])
    offset = 0
    with Ledger(settings.ledger_path) as ledger:
        for i in range(0, len(everything), 300):  # windows of 300 readings, as the stream seals
            chunk = everything[i:i + 300]
            seal(settings, ledger, chunk, offset)
            offset += len(chunk)
    return ward


def js_bands() -> dict[str, list[list[float | None]]]:
    text = APP_JS.read_text()
    found = re.search(r"const NEWS2_BANDS = (\{.*?\n\});", text, re.S)
    assert found, "NEWS2_BANDS not found in app.js"
    return json.loads(found[1])


def test_chart_bands_are_the_scores_of_api_news2() -> None:
    """The shading the charts draw agrees with the score the API computes, value by value."""
    scorers = {"hr": score_pulse, "spo2": score_spo2_scale1, "rr": score_rr,
               "temp_c": score_temperature, "sys": score_systolic}
    bands = js_bands()
    assert set(bands) == set(scorers)
    for name, rows in bands.items():
        for value in [x / 10 for x in range(200, 2500)]:
            inside = [p for low, high, p in rows
                      if (low is None or value > low) and (high is None or value <= high)]
            assert inside == [scorers[name](value)], (name, value, inside)


def stroke_pixels(page: Any, vital: str, t_s: float, rgb: tuple[int, int, int]) -> int:
    """Pixels of the line's colour in a 3-pixel column of the chart at time ``t_s``."""
    return page.evaluate("""([vital, t, rgb]) => {
        const u = state.charts.get(vital);
        const x = Math.round(u.valToPos(t, 'x', true));
        const d = u.ctx.getImageData(x - 1, 0, 3, u.ctx.canvas.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
          if (d[i + 3] > 200 && Math.abs(d[i] - rgb[0]) < 40 && Math.abs(d[i + 1] - rgb[1]) < 40
              && Math.abs(d[i + 2] - rgb[2]) < 40) n++;
        }
        return n; }""", [vital, t_s, list(rgb)])


def pixel(page: Any, vital: str, t_s: float, value: float) -> list[int]:
    return page.evaluate("""([vital, t, v]) => {
        const u = state.charts.get(vital);
        const x = Math.round(u.valToPos(t, 'x', true)), y = Math.round(u.valToPos(v, 'y', true));
        return Array.from(u.ctx.getImageData(x, y, 1, 1).data); }""", [vital, t_s, value])


@pytest.mark.e2e
@needs_chromium
def test_clinician_and_auditor_screens(isolated: Settings, tmp_path: Path) -> None:
    base_settings = isolated.with_overrides(state_dir=tmp_path, anchor_every_windows=1,
                                            anchor_interval_seconds=0.0, anchor_confirmations=1)
    settings = base_settings.with_overrides(anchor_contract=deploy(base_settings, record=False).address)
    now_us = time.time_ns() // 1000
    ward = seed_ward(settings, now_us)
    anchor_all(settings)
    latest = {p: rows[-1]["vitals"] for p, rows in ward.items()}
    scores = {p: news2(v) for p, v in latest.items()}
    assert scores["pat-decline"].risk == "high" and scores["pat-amber"].risk == "medium", scores
    store_path = tmp_path / "api.sqlite"
    store = ApiStore(store_path)
    try:
        tokens = {name: store.add_user(name, role) for name, role in
                  (("dr-okafor", "clinician"), ("audrey", "auditor"), ("root", "admin"))}
        for patient in ward:
            store.add_grant(patient, "dr-okafor", now_us + 8 * 3600 * SECOND_US, "root")
    finally:
        store.close()

    with serve(settings, store_path) as base, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900},
                                          timezone_id=TIMEZONE, locale="en-GB")
            page = context.new_page()
            page.set_default_timeout(15_000)
            sign_in(page, base, tokens["dr-okafor"])
            page.locator("#whoami", has_text="dr-okafor (clinician)").wait_for()
            row = page.locator("#patients tr[data-patient=pat-decline]")
            row.wait_for()

            # sickest first
            order = page.locator("#patients tbody tr").evaluate_all("rs => rs.map(r => r.dataset.patient)")
            assert order == ["pat-decline", "pat-amber", "pat-stable"], order
            # only the clinician's cards, and no raw refusal anywhere
            assert page.locator("#patients-card").is_visible()
            assert page.locator("#audit-card").is_hidden()
            assert "403" not in page.inner_text("body")

            # the list: NEWS2 by band, current vitals with units (no device/seq in their place)
            score = row.locator("td.news2")
            assert score.inner_text() == str(scores["pat-decline"].score)
            assert "risk-high" in score.get_attribute("class")
            assert "risk-medium" in page.locator("#patients tr[data-patient=pat-amber] td.news2") \
                .get_attribute("class")
            v = latest["pat-decline"]
            vitals_text = row.locator("td.vitals").inner_text()
            for expected in (f"HR {v['hr']} /min", f"SpO₂ {v['spo2']}%", f"RR {v['rr']} /min",
                             f"T {v['temp_c']:.1f} °C", f"BP {v['sys']}/{v['dia']} mmHg"):
                assert expected in vitals_text, (expected, vitals_text)
            # today's times without the date, always 24 h and with the zone
            assert re.search(r"^(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d " + ZONE + r" \(\d+ s ago\)$",
                             row.locator("td.time").inner_text())

            # the deteriorating patient: numbers with units and time, the NEWS2 breakdown
            row.click()
            tile = page.locator("#latest .tile[data-vital=hr]")
            tile.wait_for()
            assert tile.locator(".num").inner_text() == str(v["hr"])
            assert tile.locator(".unit").inner_text().strip() == "/min"
            assert re.search(r"^\d\d:\d\d:\d\d " + ZONE, tile.locator(".at").inner_text())
            assert page.locator("#latest .tile[data-vital=spo2] .num").inner_text() == str(v["spo2"])
            assert page.locator("#latest .tile[data-vital=temp_c] .num").inner_text() == f"{v['temp_c']:.1f}"
            assert page.locator("#latest .tile[data-vital=bp] .num").inner_text() == f"{v['sys']}/{v['dia']}"
            rows = page.locator("#news2-breakdown tbody tr")
            assert rows.count() == 7
            components = scores["pat-decline"].components
            for i in range(7):
                key = rows.nth(i).get_attribute("data-component")
                assert rows.nth(i).locator("td.points").inner_text() == str(components[key]), key
            assert page.locator("#news2-total").inner_text() == str(scores["pat-decline"].score)
            assert "emergency response" in page.locator("#news2-risk").inner_text()

            # charts: five, on clinical ranges, saying what a point is
            wait_until(lambda: page.locator("figure.chart[data-latest]").count() == 5, 15, "five charts")
            # 2 s readings in 10 s intervals: 5 a point (fewer in the partly covered end ones)
            assert re.search(r"each point is the mean of the readings in a 10 s interval "
                             r"\((\d–)?5 readings per point\)", page.locator("#patient-note").inner_text())
            assert "points: 10 s means" in page.locator("figure.chart[data-vital=hr] .sub").inner_text()
            y = page.evaluate("(() => { const s = state.charts.get('spo2').scales.y; return [s.min, s.max]; })()")
            assert y[0] <= 85 and y[1] >= 100, y  # not zoomed to the noise
            assert page.locator("figure.chart[data-vital=hr]").get_attribute("data-gaps") == "0"
            # the legend under each chart: the last point's value and time, never "--"
            legend = page.locator("figure.chart[data-vital=hr] .u-legend").inner_text()
            assert "(last point)" in legend and "/min" in legend and "--" not in legend, legend
            keep_screenshot(page, "dashboard-clinician.png")

            # the stable patient's device was off for three minutes: a break, not a straight line
            page.locator("#patients tr[data-patient=pat-stable]").click()
            chart = page.locator("figure.chart[data-vital=hr][data-gaps='1']")
            chart.wait_for()
            now_s = now_us / 1e6
            middle = now_s - sum(GAP_S) / 2
            assert stroke_pixels(page, "hr", middle, HR_RED) == 0
            assert stroke_pixels(page, "hr", now_s - 20 * 60, HR_RED) > 0
            assert stroke_pixels(page, "hr", now_s - 5 * 60, HR_RED) > 0
            assert "1 gap(s) with no readings" in chart.locator(".sub").inner_text()
            keep_screenshot(page, "dashboard-clinician-gap.png")
            # NEWS2 bands shade the plot: red where a pulse scores 3, nothing where it scores 0
            shaded, clear = pixel(page, "hr", middle, 142), pixel(page, "hr", middle, 66)
            assert shaded[3] > 0 and shaded[0] > shaded[1], shaded
            assert clear[3] == 0, clear
            context.close()

            # the auditor: windows and proofs only
            context = browser.new_context(viewport={"width": 1280, "height": 900},
                                          timezone_id=TIMEZONE, locale="en-GB", accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(15_000)
            sign_in(page, base, tokens["audrey"])
            page.locator("#whoami", has_text="audrey (auditor)").wait_for()
            page.locator("#windows tbody tr").first.wait_for()
            assert page.locator("#patients-card").is_hidden() and page.locator("#patient").is_hidden()
            assert "403" not in page.inner_text("body")
            assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d " + ZONE,
                             page.locator("#windows tbody tr td.time").first.inner_text())
            with page.expect_download() as download_info:
                page.locator("#windows tbody tr").first.get_by_role("button").first.click()
            page.locator("#verdict .badge", has_text="valid").wait_for()
            # a copy of that proof with its heart rate edited: the verdict names the broken step
            proof = tmp_path / "proof.json"
            download_info.value.save_as(proof)
            bundle = json.loads(proof.read_text())
            bundle["reading"]["vitals"]["hr"] += 1
            forged = tmp_path / "forged.json"
            forged.write_text(json.dumps(bundle))
            page.set_input_files("#proof-file", str(forged))
            page.locator("#verdict .badge", has_text="invalid").wait_for()
            assert "reading-inclusion" in page.locator("#verdict").inner_text()
            keep_screenshot(page, "dashboard-auditor-full.png")
            context.close()

            # an admin has no cards: a note says where users and grants are managed, no 403
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(15_000)
            sign_in(page, base, tokens["root"])
            page.locator("#role-note", has_text="admin role has no dashboard cards").wait_for()
            assert page.locator("#patients-card").is_hidden() and page.locator("#audit-card").is_hidden()
            assert "403" not in page.inner_text("body")
        finally:
            browser.close()
