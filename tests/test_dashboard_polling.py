"""What the dashboard asks the API for while a clinician watches, in a real headless Chromium.

The patients list (latest reading, NEWS2) is polled every second, so a reading is on screen
within a second of being queryable; the open patient's chart no more often than one of its
points can change (its interval, at least 5 s); a hidden tab asks for nothing, and asks again
as soon as it is shown.  Requests are counted as the browser sends them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.common_support import wait_until
from tests.test_dashboard_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SECOND_US,
    keep_screenshot,
    needs_chromium,
    seed,
    serve,
    sign_in,
)
from vitalchain.config import Settings
from vitalchain.storage.apistore import ApiStore

playwright_api = pytest.importorskip("playwright.sync_api")

HIDE = """hidden => {
    Object.defineProperty(document, 'hidden', {configurable: true, get: () => hidden});
    document.dispatchEvent(new Event('visibilitychange')); }"""


@pytest.mark.e2e
@needs_chromium
def test_the_list_is_polled_every_second_the_chart_at_its_pace_a_hidden_tab_not(
        isolated: Settings, tmp_path: Path) -> None:
    settings = isolated.with_overrides(state_dir=tmp_path)
    now_us = time.time_ns() // 1000
    seed(settings, now_us)
    store_path = tmp_path / "api.sqlite"
    store = ApiStore(store_path)
    try:
        token = store.add_user("alice", "clinician")
        for patient in ("pat-a", "pat-b", "pat-c"):
            store.add_grant(patient, "alice", now_us + 3600 * SECOND_US, "alice")
    finally:
        store.close()
    with serve(settings, store_path) as base, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(15_000)
            sign_in(page, base, token)
            page.locator("#patients tr[data-patient=pat-a]").click()
            page.locator("#latest .tile[data-vital=hr]").wait_for()

            # The page's own clock and Resource Timing entries: when the browser sent each
            # request (Playwright's request events reach Python only when it next calls in).
            def clock() -> float:
                return float(page.evaluate("() => performance.now()"))

            def sent(since_ms: float) -> list[str]:
                return page.evaluate("""since => performance.getEntriesByType('resource')
                    .filter(e => e.startTime >= since).map(e => new URL(e.name).pathname)""", since_ms)

            def lists(since_ms: float) -> int:
                return sent(since_ms).count("/clinician/patients")

            def watch(seconds: float) -> float:
                began, t0 = clock(), time.monotonic()
                wait_until(lambda: time.monotonic() - t0 >= seconds, seconds + 5, f"{seconds} s")
                return began

            began = watch(6.5)
            series = [u for u in sent(began) if u.endswith("/vitals")]
            # every second (a slow box may skip a beat while a refresh still runs); the 30 min
            # chart (10 s points) at most once in 6.5 s
            assert 4 <= lists(began) <= 8, sent(began)
            assert len(series) <= 1, series
            keep_screenshot(page, "dashboard-polling.png")

            page.evaluate(HIDE, True)
            hidden = watch(3)
            assert [u for u in sent(hidden + 500) if u.startswith("/clinician")] == []

            page.evaluate(HIDE, False)
            shown = clock()
            wait_until(lambda: lists(shown) > 0, 5, "the list to be asked for again once shown")
        finally:
            browser.close()
