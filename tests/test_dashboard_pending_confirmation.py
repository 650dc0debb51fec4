"""The dashboard (real Chromium) says when an anchor is mined but not yet confirmed: the window
list shows ``pending-confirmation n/K`` and a proof fetched then is reported as such, not as a
plain "not anchored" (the anchor worker is stepped by hand, so the state holds still)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.common_support import wait_until
from tests.test_dashboard_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DEVICE,
    keep_screenshot,
    needs_chromium,
    playwright_api,
    seed,
    serve,
    sign_in,
)
from vitalchain.anchor.deploy import deploy
from vitalchain.anchor.worker import AnchorWorker
from vitalchain.config import Settings
from vitalchain.storage.anchors import AnchorStore
from vitalchain.storage.apistore import ApiStore


@needs_chromium
@pytest.mark.e2e
def test_dashboard_shows_pending_confirmation(isolated: Settings, tmp_path: Path) -> None:
    base = isolated.with_overrides(state_dir=tmp_path, anchor_every_windows=1,
                                   anchor_interval_seconds=0.0, anchor_confirmations=5)
    settings = base.with_overrides(anchor_contract=deploy(base, record=False).address)
    now_us = time.time_ns() // 1000
    seed(settings, now_us)
    worker = AnchorWorker(settings)
    try:
        def mined() -> bool:
            worker.tick()
            with AnchorStore(settings.ledger_path) as store:
                return bool(store.checkpoints(settings.anchor_contract, "mined"))
        wait_until(mined, 30, "an anchor mined", interval=0.2)
    finally:
        worker.close()  # no more steps: the anchor stays unconfirmed in the records
    store_path = tmp_path / "api.sqlite"
    store = ApiStore(store_path)
    try:
        token = store.add_user("audrey", "auditor")
    finally:
        store.close()

    with serve(settings, store_path) as url, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900},
                                          accept_downloads=True)
            page = context.new_page()
            page.set_default_timeout(15_000)
            sign_in(page, url, token)
            page.locator("#windows tbody tr").first.wait_for()
            badges = page.locator("#windows tbody .badge").all_inner_texts()
            assert badges and all(b.startswith("pending-confirmation ") and b.endswith("/5")
                                  for b in badges), badges
            with page.expect_download():
                page.locator("#windows tbody tr").first.get_by_role(
                    "button", name=f"{DEVICE} #59").click()
            verdict = page.locator("#verdict")
            verdict.locator(".badge", has_text="pending-confirmation").wait_for()
            text = verdict.inner_text()
            assert "every hash checks out" in text and "not yet counted as anchored" in text, text
            keep_screenshot(page, "dashboard-pending-confirmation.png")
            context.close()
        finally:
            browser.close()
