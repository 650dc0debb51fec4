"""Run the tamper audit in a loop against a live pipeline and count false alarms.

    .venv/bin/python scripts/audit_live_loop.py                      # 5 minutes, demo settings
    .venv/bin/python scripts/audit_live_loop.py --seconds 60 --devices 10 --rate 2 \\
        --window-seconds 2 --idle-seal-seconds 1 --anchor-every 2   # shorter, more seals per second

Starts a private stack (Mosquitto, Kafka, InfluxDB, anvil) on free loopback ports in a temporary
folder, deploys the anchor contract, provisions wearables and runs the bridge, a stream worker,
the anchoring worker, the dead-letter archiver and the API as the processes an operator runs (as
``vitalchain demo`` does, with its defaults: 30 wearables at 1 Hz). While the fleet publishes, it
audits ``[fleet start, now]`` over and over, alternately in process (``vitalchain audit``'s engine)
and through ``POST /audit/run`` (whose access-log entries the API seals into the same log); the
range reaches into windows being sealed, the case of the issue. Nothing is tampered with, so
every finding is a false alarm: the exit status is 1 if any audit had one, 0 otherwise.
``tests/test_audit_live.py`` runs :func:`run_loop` for a bounded time on the test stack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from vitalchain.anchor.deploy import deploy
from vitalchain.api.app import api_path
from vitalchain.app.pipeline import Pipeline
from vitalchain.app.stack.ports import free_port, free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.audit.engine import run_audit
from vitalchain.audit.report import AuditReport
from vitalchain.config import Settings, load_settings
from vitalchain.devices.fleet import run_fleet
from vitalchain.devices.registry import provision_devices
from vitalchain.ingest.bridge import forget_session
from vitalchain.storage.apistore import ApiStore

Say = Callable[[str], None]


@dataclass
class LoopResult:
    audits: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)  # text of each audit that had any
    windows_judged_max: int = 0
    readings_judged_max: int = 0
    windows_after_horizon: int = 0  # summed over audits: how often the race was there
    readings_after_horizon: int = 0
    gaps_seen: int = 0
    audit_seconds: list[float] = field(default_factory=list)

    def line(self) -> str:
        worst = max(self.audit_seconds, default=0.0)
        return (f"{self.audits} audits: verdicts {dict(self.verdicts)}; findings in "
                f"{len(self.findings)}; up to {self.windows_judged_max} windows and "
                f"{self.readings_judged_max} readings judged per audit; not judged (sealed after "
                f"the horizon), summed: {self.windows_after_horizon} windows, "
                f"{self.readings_after_horizon} readings; gap notes {self.gaps_seen}; "
                f"audit time max {worst:.1f}s")


def _record(result: LoopResult, report: AuditReport, seconds: float) -> None:
    result.audits += 1
    result.verdicts[report.verdict] += 1
    result.audit_seconds.append(seconds)
    result.windows_judged_max = max(result.windows_judged_max, report.windows_checked)
    result.readings_judged_max = max(result.readings_judged_max, report.readings_checked)
    result.windows_after_horizon += report.windows_after_horizon
    result.readings_after_horizon += report.readings_after_horizon
    result.gaps_seen += len(report.gaps)
    if report.finding_count():
        result.findings.append(report.to_text())


def _record_api(result: LoopResult, data: dict[str, Any], seconds: float) -> None:
    """The same bookkeeping for a ``vitalchain-audit/1`` report from ``POST /audit/run``."""
    counts = data["counts"]
    result.audits += 1
    result.verdicts[f"{data['verdict']} (API)"] += 1
    result.audit_seconds.append(seconds)
    result.windows_judged_max = max(result.windows_judged_max, counts["windows_checked"])
    result.readings_judged_max = max(result.readings_judged_max, counts["readings_checked"])
    result.windows_after_horizon += counts["windows_after_horizon"]
    result.readings_after_horizon += counts["readings_after_horizon"]
    result.gaps_seen += counts["gaps"]
    if data["readings"] or data["windows"] or data["checkpoints"]:
        result.findings.append(json.dumps(data, indent=2))


def _wait_api(base: str, pipeline: Pipeline, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipeline.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the API did not answer at {base} within {timeout:.0f}s")


def _wait_first_window(settings: Settings, pipeline: Pipeline, timeout: float = 120.0) -> None:
    """Until the stream has sealed a window (the ledger the audit reads exists from then on)."""
    from vitalchain.storage.ledger_view import LedgerUnavailable, LedgerView

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipeline.check_alive()
        with contextlib.suppress(LedgerUnavailable), LedgerView(settings.ledger_target) as view:
            if view.log_size():
                return
        time.sleep(0.5)
    raise TimeoutError(f"no window sealed within {timeout:.0f}s; logs in {settings.logs_dir}")


def run_loop(settings: Settings, seconds: float, devices: int, rate: float, say: Say,
             min_audits: int = 0) -> LoopResult:
    """Pipeline + fleet on ``settings``' stack; audit in a loop for ``seconds`` (and at least
    ``min_audits`` times). ``settings`` needs its own topics, database and ledger."""
    contract = deploy(settings, record=False).address
    settings = settings.with_overrides(anchor_contract=contract)
    tag = uuid.uuid4().hex[:6]
    identities = provision_devices(settings, devices, prefix=f"loop{tag}")
    instance = random.randint(1000, 9999)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    store = ApiStore(api_path(settings))
    try:
        token = store.add_user(f"loop-auditor-{tag}", "auditor")
    finally:
        store.close()
    result = LoopResult()
    stop = asyncio.Event()
    loop_box: list[asyncio.AbstractEventLoop] = []

    async def fleet() -> None:
        loop_box.append(asyncio.get_running_loop())
        await run_fleet(settings, identities, rate=rate, stop=stop, drain_timeout=10.0,
                        track_acked=False)

    publisher = threading.Thread(target=lambda: asyncio.run(fleet()), daemon=True)
    with Pipeline(settings) as pipeline:
        try:
            pipeline.start("bridge", f"bridge-{tag}", "--instance", str(instance))
            pipeline.start("stream", f"stream-{tag}", "--worker-name", tag)
            pipeline.start("anchor", f"anchor-{tag}")
            pipeline.start("deadletters", f"deadletters-{tag}")
            pipeline.start("api", f"api-{tag}", "--port", str(port))
            _wait_api(base, pipeline)
            start_us = time.time_ns() // 1000
            publisher.start()
            say(f"fleet of {devices} at {rate}/s started")
            _wait_first_window(settings, pipeline)
            say(f"first window sealed; auditing [{start_us}, now] for {seconds:.0f}s")
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline or result.audits < min_audits:
                pipeline.check_alive()
                began = time.monotonic()
                now_us = time.time_ns() // 1000
                if result.audits % 2:
                    r = httpx.post(f"{base}/audit/run", timeout=120,
                                   json={"from": str(start_us), "to": str(now_us)},
                                   headers={"Authorization": f"Bearer {token}"})
                    r.raise_for_status()
                    data = r.json()
                    _record_api(result, data, time.monotonic() - began)
                    summary, counts = data["summary"], data["counts"]
                    not_judged = (counts["windows_after_horizon"], counts["readings_after_horizon"],
                                  counts["gaps"])
                else:
                    report = asyncio.run(run_audit(settings, start_us, now_us))
                    _record(result, report, time.monotonic() - began)
                    summary = report.summary()
                    not_judged = (report.windows_after_horizon, report.readings_after_horizon,
                                  len(report.gaps))
                    if report.finding_count():
                        say(report.to_text())
                say(f"audit {result.audits}{' (API)' if not result.audits % 2 else ''}: {summary} "
                    f"(not judged: {not_judged[0]} windows, {not_judged[1]} readings; "
                    f"gaps {not_judged[2]})")
        finally:
            if loop_box:
                loop_box[0].call_soon_threadsafe(stop.set)
            if publisher.is_alive():
                publisher.join(60)
            pipeline.stop_all()
            with contextlib.suppress(Exception):
                forget_session(settings, instance)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--rate", type=float, default=1.0, help="readings per second per device")
    parser.add_argument("--window-seconds", type=float, default=None)
    parser.add_argument("--idle-seal-seconds", type=float, default=None)
    parser.add_argument("--anchor-every", type=int, default=None, help="anchor_every_windows")
    args = parser.parse_args()
    overrides: dict[str, object] = {}
    if args.window_seconds is not None:
        overrides["window_seconds"] = args.window_seconds
    if args.idle_seal_seconds is not None:
        overrides["idle_seal_seconds"] = args.idle_seal_seconds
    if args.anchor_every is not None:
        overrides["anchor_every_windows"] = args.anchor_every
    with tempfile.TemporaryDirectory(prefix="vc-auditloop-") as tmp:
        mqtt, kafka, influx, eth, rpc, api = free_ports(6)
        settings = load_settings(environ={}, state_dir=Path(tmp), mqtt_port=mqtt, kafka_port=kafka,
                                 influx_port=influx, eth_port=eth, influx_rpc_port=rpc,
                                 api_port=api, **overrides)
        stack = Stack(settings)
        try:
            stack.up()
            result = run_loop(settings, args.seconds, args.devices, args.rate, print)
        finally:
            stack.down()
    print(result.line())
    for text in result.findings:
        print("---\n" + text)
    return 1 if result.findings else 0


if __name__ == "__main__":
    sys.exit(main())
