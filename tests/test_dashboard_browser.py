"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

The API runs under uvicorn on a free loopback port over real InfluxDB, the ledger and the shared
anvil chain; data is sealed as the stream seals it and anchored by the real anchor worker, so
the proofs the page downloads and verifies are real.  Screenshots are kept in ``artifacts/``.
"""

from __future__ import annotations

import json
import math
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.common_support import wait_until, write_registry
from tests.test_api_anchored import anchor_all
from tests.test_api_http import seal
from vitalchain.anchor.deploy import deploy
from vitalchain.api.app import create_app
from vitalchain.api.news2 import news2
from vitalchain.app.stack.ports import free_ports
from vitalchain.config import Settings
from vitalchain.storage.apistore import ApiStore
from vitalchain.storage.ledger import Ledger

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SECOND_US = 1_000_000
DEVICE = "dev-a_1"

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="Debian package chromium not installed (scripts/setup.sh installs it)")


# --- data and server -------------------------------------------------------------------------
def reading(device: str, patient: str, seq: int, ts_us: int, vitals: dict[str, Any]) -> dict[str, Any]:
    return {"device_id": device, "patient_id": patient, "seq": seq, "ts_us": ts_us, "vitals": vitals}


def wave(i: int) -> dict[str, Any]:
    """Plausible, varying vitals (so the charts have shape)."""
    s = math.sin(i / 6)
    return {"hr": round(78 + 9 * s), "spo2": 96 + (i % 3 == 0), "rr": 15 + (i % 4 == 0),
            "temp_c": round(36.9 + 0.3 * s, 1), "sys": round(122 + 8 * s), "dia": round(79 + 5 * s)}


WORRYING = {"hr": 112, "spo2": 95, "rr": 21, "temp_c": 37.6, "sys": 116, "dia": 74}
DETERIORATING = {"hr": 124, "spo2": 93, "rr": 24, "temp_c": 38.4, "sys": 104, "dia": 66}


def seed(settings: Settings, now_us: int) -> dict[str, Any]:
    """Two windows: pat-a (60 readings over 30 min, the last one worrying), pat-c, pat-b."""
    a = [reading(DEVICE, "pat-a", i, now_us - (60 - i) * 30 * SECOND_US, wave(i)) for i in range(60)]
    a[-1]["vitals"] = WORRYING
    c = [reading("dev-c", "pat-c", i, now_us - (20 - i) * 60 * SECOND_US, wave(i + 3)) for i in range(20)]
    b = [reading("dev-b", "pat-b", i, now_us - (5 - i) * 60 * SECOND_US, wave(i)) for i in range(5)]
    with Ledger(settings.ledger_path) as ledger:
        seal(settings, ledger, a[:30] + c[:10], 0)
        seal(settings, ledger, a[30:] + c[10:] + b, 40)
    write_registry(settings.state_dir, {DEVICE: "pat-a", "dev-c": "pat-c", "dev-b": "pat-b"})
    return {"next_offset": 40 + 30 + 10 + 5, "latest_a": a[-1]}


def seal_one(settings: Settings, raw: dict[str, Any], offset: int) -> None:
    with Ledger(settings.ledger_path) as ledger:
        seal(settings, ledger, [raw], offset)


def in_thread(job: Callable[[], None]) -> None:
    """Run ``job`` in a thread of its own: sync Playwright keeps an event loop in this one."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            job()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "job did not finish"
    if errors:
        raise errors[0]


@contextmanager
def serve(settings: Settings, store_path: Path) -> Iterator[str]:
    """The API under a real uvicorn in a thread; stopped (and joined) on exit."""
    app = create_app(settings, seal_seconds=3600, store_path=str(store_path))
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 30, "uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "uvicorn did not stop"


# --- PNG check (no image library needed) --------------------------------------------------------
def png_colours(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct RGB colours) of an 8-bit RGB/RGBA PNG, decoded with zlib only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6), f"unexpected PNG depth {depth} colour type {colour}"
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        if y % 4 == 0:  # every 4th row is plenty to tell a page from a blank
            colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp))
        prev = line
    return width, height, len(colours)


def keep_screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    width, height, colours = png_colours(path.read_bytes())
    assert width >= 1000 and height >= 600, (width, height)
    assert colours > 50, f"{name} looks blank: {colours} distinct colours"
    return path


# --- the browser ---------------------------------------------------------------------------------
def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(base + "/")
    page.fill("#token", token)
    page.click("#signin-form button[type=submit]")


def canvas_ink(page: Any, vital: str) -> int:
    """Non-transparent pixels uPlot drew on a chart's canvas (0 for an empty canvas)."""
    return page.eval_on_selector(f"figure.chart[data-vital={vital}] canvas", """c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }""")


def test_png_check_tells_a_page_from_a_blank() -> None:
    def png(rows: list[bytes], width: int) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        header = struct.pack(">IIBBBBB", width, len(rows), 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
                + chunk(b"IEND", b""))

    blank = [b"\x00" + b"\xff\xff\xff" * 64] * 8
    assert png_colours(png(blank, 64)) == (64, 8, 1)
    # a gradient written with Sub filters: 64 distinct greys once unfiltered
    sub = [b"\x01" + b"\x00\x00\x00" + b"\x01\x01\x01" * 63] * 8
    assert png_colours(png(sub, 64)) == (64, 8, 64)


@pytest.mark.e2e
@needs_chromium
def test_dashboard_for_a_clinician_and_an_auditor(isolated: Settings, tmp_path: Path) -> None:
    base_settings = isolated.with_overrides(state_dir=tmp_path, anchor_every_windows=1,
                                            anchor_interval_seconds=0.0, anchor_confirmations=1)
    settings = base_settings.with_overrides(anchor_contract=deploy(base_settings, record=False).address)
    now_us = time.time_ns() // 1000
    seeded = seed(settings, now_us)
    assert anchor_all(settings) == 2
    store_path = tmp_path / "api.sqlite"
    store = ApiStore(store_path)
    try:
        tokens = {name: store.add_user(name, role) for name, role in
                  (("alice", "clinician"), ("audrey", "auditor"))}
        for patient in ("pat-a", "pat-c"):
            store.add_grant(patient, "alice", now_us + 3600 * SECOND_US, "root")
    finally:
        store.close()
    worrying, deteriorating = news2(WORRYING), news2(DETERIORATING)
    assert (worrying.risk, deteriorating.risk) == ("medium", "high")  # so the colours must change

    with serve(settings, store_path) as base, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            urls: list[str] = []
            clinician = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page = clinician.new_page()
            page.on("request", lambda r: urls.append(r.url))
            page.set_default_timeout(15_000)

            # a wrong token is refused with the API's 401 reason
            sign_in(page, base, "vct_nobody_notasecretatall")
            error = page.locator("#signin-error")
            error.wait_for(state="visible")
            assert "401" in error.inner_text() and "invalid, unknown or disabled token" in error.inner_text()
            assert page.locator("#app").is_hidden()

            # the clinician: patient list with NEWS2 coloured by band and the last reading's time
            sign_in(page, base, tokens["alice"])
            page.locator("#whoami", has_text="alice (clinician)").wait_for()
            row = page.locator("#patients tr[data-patient=pat-a]")
            row.wait_for()
            score = row.locator("td.news2")
            assert score.inner_text() == str(worrying.score)
            assert "risk-medium" in score.get_attribute("class")
            assert "ago" in row.locator("td.time").inner_text()
            assert page.locator("#patients tr[data-patient=pat-c] td.news2").inner_text().isdigit()
            assert page.locator("#patients tr[data-patient=pat-b]").count() == 0  # no grant
            # only the clinician's cards: the auditor's is not shown (not as a 403 either)
            assert page.locator("#audit-card").is_hidden()
            assert "403" not in page.inner_text("body")

            # one chart per vital, drawn on non-empty canvases
            row.click()
            charts = page.locator("figure.chart canvas")
            wait_until(lambda: charts.count() == 5, 15, "five charts")
            for i in range(5):
                box = charts.nth(i).bounding_box()
                assert box and box["width"] > 100 and box["height"] > 50, box
            wait_until(lambda: canvas_ink(page, "hr") > 200, 15, "the heart-rate line to be drawn")
            points = re.search(r"(\d+) points", page.locator("#patient-note").inner_text())
            assert points and 50 <= int(points[1]) <= 61, points  # 60 readings in 30 min

            # live: a reading sealed now shows up without touching the page
            fresh = reading(DEVICE, "pat-a", 60, time.time_ns() // 1000, DETERIORATING)
            in_thread(lambda: seal_one(settings, fresh, seeded["next_offset"]))
            page.locator("#patients tr[data-patient=pat-a]", has_text=f"{DEVICE} · 60").wait_for()
            assert score.inner_text() == str(deteriorating.score)
            assert "risk-high" in score.get_attribute("class")
            page.locator(f"figure.chart[data-vital=hr][data-latest='{DETERIORATING['hr']}']").wait_for()
            page.locator(f"figure.chart[data-vital=bp][data-latest='{DETERIORATING['sys']}/"
                         f"{DETERIORATING['dia']}']").wait_for()
            page.locator("#proof-target", has_text=f"{DEVICE} seq 60").wait_for()

            # proof of the latest reading: downloaded as a file, then verified in place
            with page.expect_download() as download_info:
                page.click("#proof-btn")
            download = download_info.value
            assert download.suggested_filename == f"proof-{DEVICE}-60.json"
            proof_file = tmp_path / download.suggested_filename
            download.save_as(proof_file)
            bundle = json.loads(proof_file.read_text())
            assert bundle["format"] == "vitalchain-proof/1" and bundle["reading"]["seq"] == 60
            verdict = page.locator("#verdict")
            verdict.locator(".badge", has_text="pending").wait_for()  # sealed just now, not anchored
            assert "every hash checks out" in verdict.inner_text()
            assert "hashes valid, not anchored yet" in verdict.inner_text()
            keep_screenshot(page, "dashboard.png")
            clinician.close()

            # the auditor: windows with anchor status; proofs verified in place
            auditor = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page = auditor.new_page()
            page.on("request", lambda r: urls.append(r.url))
            page.set_default_timeout(15_000)
            sign_in(page, base, tokens["audrey"])
            page.locator("#whoami", has_text="audrey (auditor)").wait_for()
            page.locator("#windows tbody tr").first.wait_for()
            statuses = page.locator("#windows tbody .badge").all_inner_texts()
            assert statuses == ["unanchored", "anchored", "anchored"], statuses  # newest first
            assert page.locator("#patients-card").is_hidden()  # the auditor's cards only
            assert "403" not in page.inner_text("body")

            with page.expect_download() as download_info:
                page.locator("#windows tbody tr").nth(1).get_by_role("button", name=f"{DEVICE} #59").click()
            assert download_info.value.suggested_filename == f"proof-{DEVICE}-59.json"
            verdict = page.locator("#verdict")
            verdict.locator(".badge", has_text="valid").wait_for()
            assert "anchored" in verdict.inner_text()
            # the server checked the anchor on its chain, and the verdict says so (block N)
            assert "hashes valid, anchor verified on chain (block " in verdict.inner_text()
            assert page.locator("#steps li.step-failed").count() == 0
            assert page.locator("#steps li.step-ok").count() >= 3

            # the clinician's downloaded file, then a tampered copy of it
            page.set_input_files("#proof-file", str(proof_file))
            verdict.locator(".badge", has_text="pending").wait_for()
            bundle["reading"]["vitals"]["hr"] += 1
            forged = tmp_path / "forged.json"
            forged.write_text(json.dumps(bundle))
            page.set_input_files("#proof-file", str(forged))
            verdict.locator(".badge", has_text="invalid").wait_for()
            assert "reading-inclusion" in verdict.inner_text()
            assert page.locator("#steps li.step-failed").count() >= 1
            keep_screenshot(page, "dashboard-auditor.png")
            auditor.close()
        finally:
            browser.close()

    # everything came from the API itself, and no token ever travelled in a URL
    assert urls and all(u.startswith(base) or u.startswith(("data:", "blob:")) for u in urls), \
        [u for u in urls if not u.startswith(base)]
    assert any(u.endswith("/static/vendor/uplot.js") for u in urls)
    assert not [u for u in urls for t in tokens.values() if t in u]
