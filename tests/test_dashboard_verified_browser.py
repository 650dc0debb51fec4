"""Verified reads in the dashboard, in a real headless Chromium over real InfluxDB and ledger.

A reading altered in InfluxDB after sealing and one inserted there are not the patient's latest,
not scored and not charted; the clinician sees them listed as withheld with their state.  A
reading of a still-open window is shown at once, marked "received · not verified", without a proof button.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.audit_support import influx_query
from tests.common_support import wait_until
from tests.test_api_verified_reads import ALARMING, alter, insert, stored_row
from tests.test_dashboard_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DEVICE,
    SECOND_US,
    WORRYING,
    in_thread,
    keep_screenshot,
    needs_chromium,
    seed,
    serve,
    sign_in,
    wave,
)
from vitalchain.api.news2 import news2
from vitalchain.config import Settings
from vitalchain.storage.apistore import ApiStore

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.mark.e2e
@needs_chromium
def test_dashboard_withholds_altered_and_unknown_and_marks_received(isolated: Settings,
                                                                     tmp_path: Path) -> None:
    settings = isolated.with_overrides(state_dir=tmp_path)
    now_us = time.time_ns() // 1000
    seeded = seed(settings, now_us)  # pat-a: dev-a_1 seq 0..59, the last one WORRYING
    registry = tmp_path / "devices" / "registry.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text('{"dev-a_1": "pat-a", "dev-c": "pat-c", "dev-b": "pat-b"}')
    store_path = tmp_path / "api.sqlite"
    store = ApiStore(store_path)
    try:
        token = store.add_user("alice", "clinician")
        for patient in ("pat-a", "pat-c"):
            store.add_grant(patient, "alice", now_us + 3600 * SECOND_US, "root")
    finally:
        store.close()
    # The attacks: pat-a's latest (WORRYING, NEWS2 5) edited by one beat; for pat-c a reading
    # nobody sent, newest, NEWS2 14, claiming a sealed window.
    alter(settings, DEVICE, 59, hr=WORRYING["hr"] + 1)
    insert(settings, "dev-c", 20, now_us, "p0-0", ALARMING, patient="pat-c")
    fallback = news2(wave(58))  # pat-a's newest reading that still matches the ledger
    pat_c_real = news2(wave(19 + 3))
    assert fallback.score != news2(WORRYING).score and pat_c_real.score != 14

    with serve(settings, store_path) as base, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(15_000)
            sign_in(page, base, token)
            row = page.locator("#patients tr[data-patient=pat-a]")
            row.wait_for()
            assert row.locator("td.news2").inner_text() == str(fallback.score)
            assert f"{DEVICE} · 58" in row.inner_text()
            integrity = row.locator("td.integrity")
            assert integrity.locator(".state-sealed").inner_text() == "sealed"
            assert "1 newer withheld (altered)" in integrity.locator(".state-withheld").inner_text()
            row_c = page.locator("#patients tr[data-patient=pat-c]")
            assert row_c.locator("td.news2").inner_text() == str(pat_c_real.score)
            assert "dev-c · 19" in row_c.inner_text()
            assert "withheld (unknown)" in row_c.locator("td.integrity").inner_text()

            # the chart never got the altered value; the reading is listed with its state
            row.click()
            page.locator("#withheld li[data-seq='59'][data-state=altered]").wait_for()
            assert "altered after sealing" in page.locator("#withheld").inner_text()
            assert "1 reading(s) in range withheld" in page.locator("#withheld-note").inner_text()
            page.locator(f"figure.chart[data-vital=hr][data-latest='{wave(58)['hr']}']").wait_for()
            assert "every reading checked against the ledger" in page.locator("#patient-note").inner_text()

            # a reading of the open window: shown now, marked, and no proof offered for it
            fresh = now_us + SECOND_US
            in_thread(lambda: insert(settings, DEVICE, 60, fresh, f"p0-{seeded['next_offset']}",
                                     WORRYING))  # sync Playwright holds this thread's loop
            wait_until(lambda: row.locator("td.integrity .state-received").count() == 1, 15,
                       "the received reading to show")
            assert row.locator("td.integrity .state-received").inner_text() == "received · not verified"
            assert row.locator("td.news2").inner_text() == str(news2(WORRYING).score)
            assert f"{DEVICE} · 60" in row.inner_text()
            assert page.locator("#proof-btn").is_disabled()
            assert "not sealed yet" in page.locator("#proof-target").inner_text()
            page.locator("#patient-note",
                         has_text="1 reading(s) received, not verified yet (window still open)").wait_for()
            assert "every reading checked" not in page.locator("#patient-note").inner_text()
            page.locator("#latest .tile[data-vital=hr] .at",
                         has_text="received, not verified yet").wait_for()
            keep_screenshot(page, "dashboard-received.png")  # docs/img: the state as seen

            # pat-c's newest sealed reading deleted from InfluxDB: named, not silently skipped
            assert row_c.locator("td.integrity .state-missing").count() == 0

            def delete_newest_c() -> None:
                t = stored_row(settings, "dev-c", 19)["time"]
                influx_query(settings, f"DELETE FROM readings WHERE device_id = 'dev-c' AND time = {t}")

            in_thread(delete_newest_c)
            missing = row_c.locator("td.integrity .state-missing")
            missing.wait_for()
            assert missing.inner_text() == "1 newer sealed missing"
            assert "dev-c · 18" in row_c.inner_text()
            keep_screenshot(page, "dashboard-verified-reads.png")
        finally:
            browser.close()
