"""Workers that share no files: every process has its own state folder and reaches the others only
through Kafka, InfluxDB, PostgreSQL and the chain (issue #10).

Two stream workers (one SIGKILLed mid-run), one anchoring worker and the API, all on one
PostgreSQL ledger; the salt key is the operator's file, given to each. Afterwards: every reading
exactly once, the event-time windows and their roots identical to an uncrashed run (one worker,
its own database), the whole log anchored, and a proof the API serves verifies with ``--rpc``.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.common_support import wait_until
from tests.pg_support import new_database
from tests.stream_support import Worker, all_done, check_sealed, make_input, produce, settings_env
from vitalchain.app.stack.ports import free_port
from vitalchain.app.stack.supervisor import Stack
from vitalchain.app.stack.topology import ensure_database
from vitalchain.config import Settings
from vitalchain.storage.anchors import AnchorStore
from vitalchain.storage.ledger import Ledger

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]


def cli(settings: Settings, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """``vitalchain ARGS`` as its own process with ``settings`` (its own state folder)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child holds it
    return subprocess.Popen([sys.executable, "-m", "vitalchain", *args], env=settings_env(settings),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def event_time_windows(headers: dict[str, dict]) -> dict[str, str]:
    return {k: h["root"] for k, h in headers.items() if not h["idle_cut"]}


def test_stream_anchor_and_api_workers_share_no_files(isolated: Settings, postgres: Stack,
                                                      tmp_path: Path) -> None:
    from vitalchain.anchor.deploy import deploy

    operator = tmp_path / "operator"  # what the operator provisions on every host
    operator.mkdir()
    salt = operator / "salt.key"
    salt.write_text(secrets.token_hex(32) + "\n")
    shared = isolated.with_overrides(
        window_seconds=2.0, idle_seal_seconds=2.5, stream_app_id=f"vc-pg-{uuid.uuid4().hex[:8]}",
        ledger_url=new_database(postgres), ledger_file="", salt_key_file=str(salt),
        state_dir=operator, anchor_interval_seconds=1.0, anchor_every_windows=1,
        anchor_confirmations=1, anchor_reorg_watch_blocks=1)
    contract = deploy(shared, record=False).address
    shared = shared.with_overrides(anchor_contract=contract)

    def host(name: str, **changes: object) -> Settings:
        folder = tmp_path / name
        folder.mkdir()
        return shared.with_overrides(state_dir=folder, **changes)

    stream_a, stream_b, anchorer, api = host("stream-a"), host("stream-b"), host("anchor"), host("api")
    reference = host("reference", ledger_url=new_database(postgres), influx_db=isolated.influx_db + "r",
                     stream_app_id=f"vc-ref-{uuid.uuid4().hex[:8]}")
    ensure_database(reference)

    inp = make_input(devices=8, seconds=16)
    ends = produce(shared, inp.records)
    a = Worker(stream_a, "a", tmp_path)
    b = Worker(stream_b, "b", tmp_path)
    ref = Worker(reference, "ref", tmp_path)
    anchor_proc = cli(anchorer, "anchor", "run", "--poll", "0.2", log=tmp_path / "anchor.log")
    processes = [a, b, ref]
    try:
        def sealed(settings: Settings, windows: int) -> bool:
            with Ledger(settings.ledger_target) as ledger:
                return ledger.log_size() >= windows

        wait_until(lambda: sealed(shared, 4), 90, "4 windows sealed before the kill", interval=0.02)
        a.kill(signal.SIGKILL)
        assert not all_done(shared, ends), "the worker finished before it could be killed"

        def finished(settings: Settings, workers: list[Worker]) -> bool:
            for w in workers:
                assert w.alive(), w.tail()
            return all_done(settings, ends)

        wait_until(lambda: finished(shared, [b]), 120, "the surviving worker to seal everything", interval=0.3)
        wait_until(lambda: finished(reference, [ref]), 120, "the reference run to seal everything", interval=0.3)
        crashed = check_sealed(shared, inp)
        clean = check_sealed(reference, inp)
        assert len(event_time_windows(clean)) >= 8
        assert event_time_windows(crashed) == event_time_windows(clean)
        assert set(crashed) == set(clean), "final (idle) cuts differ"

        with Ledger(shared.ledger_target) as ledger:
            log_size = ledger.log_size()

        def anchored() -> bool:
            assert anchor_proc.poll() is None, (tmp_path / "anchor.log").read_text()[-2000:]
            with AnchorStore(shared.ledger_target) as store:
                latest = store.latest(contract, "anchored")
            return latest is not None and latest.size >= log_size

        wait_until(anchored, 90, "the anchoring worker to anchor the whole log", interval=0.3)

        # The API, in its own folder: users and grants in PostgreSQL, added from another folder.
        admin_run = subprocess.run([sys.executable, "-m", "vitalchain", "users", "add", "aud", "--role",
                                    "auditor"], env=settings_env(host("admin")), capture_output=True,
                                   text=True, timeout=60)
        assert admin_run.returncode == 0, admin_run.stderr
        token = admin_run.stdout.strip().split()[-1]
        port = free_port()
        api_proc = cli(api, "api", "--port", str(port), log=tmp_path / "api.log")
        try:
            base = f"http://127.0.0.1:{port}"

            def health() -> bool:
                assert api_proc.poll() is None, (tmp_path / "api.log").read_text()[-2000:]
                try:
                    return httpx.get(f"{base}/health", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(health, 60, "the API to serve /health")
            response = httpx.get(f"{base}/audit/proofs/dev3/40", timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text
            assert response.headers["X-Vitalchain-Proof-Status"] == "anchored"
        finally:
            stop(api_proc)
        bundle = tmp_path / "bundle.json"
        bundle.write_text(json.dumps(response.json()))
        verified = subprocess.run([sys.executable, "-m", "vitalchain", "verify", "--rpc", shared.eth_rpc_url,
                                   str(bundle)], env=settings_env(host("auditor")), capture_output=True,
                                  text=True, timeout=60)
        assert verified.returncode == 0 and "VALID" in verified.stdout, verified.stdout + verified.stderr
    finally:
        stop(anchor_proc)
        for w in processes:
            if w.alive():
                w.kill(signal.SIGTERM)
    # Nothing of the ledger on disk: no SQLite file in any folder.
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.sqlite*")) == []


def test_a_stream_worker_rides_out_a_postgresql_restart(isolated: Settings, postgres: Stack,
                                                        tmp_path: Path) -> None:
    """The ledger's server restarts while a worker seals: the seal that meets the dropped
    connection fails and is retried on a new one; every reading still sealed exactly once."""
    from tests.conftest import stack_settings

    own = Stack(stack_settings(tmp_path / "pg", ledger_url=f"postgresql://vc@127.0.0.1:{free_port()}/ledger"))
    try:
        own.up(("postgres",))
        settings = isolated.with_overrides(
            window_seconds=2.0, idle_seal_seconds=2.5, stream_app_id=f"vc-pgr-{uuid.uuid4().hex[:8]}",
            ledger_url=own.settings.ledger_url, ledger_file="", state_dir=tmp_path / "worker")
        inp = make_input(devices=8, seconds=16)
        ends = produce(settings, inp.records)
        worker = Worker(settings, "a", tmp_path)
        try:
            def sealed(windows: int) -> bool:
                with Ledger(settings.ledger_target) as ledger:
                    return ledger.log_size() >= windows

            wait_until(lambda: sealed(3), 90, "3 windows sealed before the restart", interval=0.05)
            own.restart("postgres")
            assert not all_done(settings, ends), "everything was sealed before the restart"

            def finished() -> bool:
                assert worker.alive(), worker.tail()
                return all_done(settings, ends)

            wait_until(finished, 120, "the worker to seal everything after the restart", interval=0.3)
        finally:
            worker.kill(signal.SIGTERM)
        check_sealed(settings, inp)
    finally:
        own.down()
