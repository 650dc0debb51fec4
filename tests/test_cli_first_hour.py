"""A new user's first hour with the CLI: the commands the README walks through, and how they fail.

- `patients list`, grants refused for unknown patients and for device ids;
- `vitalchain api` listens on VITALCHAIN_API_PORT and prints the dashboard URL;
- a worker started while its service is down exits at once with one line naming the service and
  the fix (no raw kafka errors, no traceback);
- `stack down` stops the workers started by hand (their records), then the services;
- an expected failure (a proof while InfluxDB is down) is one `Error:` line, not a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tests.common_support import wait_until
from vitalchain.app.cli import main
from vitalchain.app.stack.ports import free_port, free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.app.workers import running_workers
from vitalchain.config import load_settings
from vitalchain.devices.registry import patient_for


def _registry(state: Path, devices: list[str]) -> None:
    path = state / "devices" / "registry.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({d: patient_for(d) for d in devices}))


def _env(state: Path, **ports: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCHAIN_")}
    env["VITALCHAIN_STATE_DIR"] = str(state)
    env.update({f"VITALCHAIN_{name.upper()}": str(port) for name, port in ports.items()})
    return env


def _stack_env(stack: Stack) -> dict[str, str]:
    s = stack.settings
    return _env(s.state_dir, mqtt_port=s.mqtt_port, kafka_port=s.kafka_port, influx_port=s.influx_port,
                eth_port=s.eth_port, influx_rpc_port=s.influx_rpc_port)


def _vitalchain(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vitalchain", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_patients_list_names_each_patient_and_its_devices(tmp_path: Path) -> None:
    _registry(tmp_path, ["wearable-00001", "wearable-00002"])
    env = {"VITALCHAIN_STATE_DIR": str(tmp_path)}
    result = CliRunner().invoke(main, ["patients", "list"], env=env)
    assert result.exit_code == 0, result.output
    lines = sorted(result.stdout.splitlines())
    assert lines == sorted(f"{patient_for(d)}\t{d}" for d in ("wearable-00001", "wearable-00002"))
    as_json = CliRunner().invoke(main, ["patients", "list", "--json"], env=env)
    assert json.loads(as_json.stdout)[patient_for("wearable-00002")] == ["wearable-00002"]
    empty = CliRunner().invoke(main, ["patients", "list"], env={"VITALCHAIN_STATE_DIR": str(tmp_path / "x")})
    assert empty.exit_code == 0 and empty.stdout == "" and "no patients" in empty.stderr


def test_grants_name_a_known_patient_never_a_device_or_a_typo(tmp_path: Path) -> None:
    _registry(tmp_path, ["wearable-00003"])
    env = {"VITALCHAIN_STATE_DIR": str(tmp_path)}
    runner = CliRunner()
    assert runner.invoke(main, ["users", "add", "alice", "--role", "clinician"], env=env).exit_code == 0
    until = ["--until", "2999-01-01T00:00:00Z"]
    device = runner.invoke(main, ["grants", "add", "wearable-00003", "alice", *until], env=env)
    assert device.exit_code == 1
    assert f"is a device, not a patient: its patient is '{patient_for('wearable-00003')}'" in device.output
    typo = runner.invoke(main, ["grants", "add", "patient-nobody", "alice", *until], env=env)
    assert typo.exit_code == 1 and "unknown patient 'patient-nobody'" in typo.output
    assert runner.invoke(main, ["grants", "list"], env=env).stdout == ""
    good = runner.invoke(main, ["grants", "add", patient_for("wearable-00003"), "alice", *until], env=env)
    assert good.exit_code == 0, good.output
    assert patient_for("wearable-00003") in runner.invoke(main, ["grants", "list"], env=env).stdout


@pytest.mark.e2e
def test_api_listens_on_the_configured_port_and_says_where(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, api_port=port, influx_port=free_port(), eth_port=free_port())
    process = subprocess.Popen([sys.executable, "-m", "vitalchain", "api"], env=env, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, f"the API on VITALCHAIN_API_PORT={port}")
        settings = load_settings(environ={"VITALCHAIN_STATE_DIR": str(tmp_path)})
        assert [w.kind for w in running_workers(settings)] == ["api"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert f"API and dashboard on http://127.0.0.1:{port}/" in stderr.splitlines()[0]
    assert running_workers(settings) == []


@pytest.mark.parametrize(("command", "service"), [
    (["bridge", "run"], "Kafka does not answer at 127.0.0.1:"),
    (["stream", "run"], "Kafka does not answer at 127.0.0.1:"),
    (["deadletters", "run"], "Kafka does not answer at 127.0.0.1:"),
    (["anchor", "run"], "the Ethereum node does not answer at http://127.0.0.1:"),
    (["deadletters", "list"], "InfluxDB does not answer at http://127.0.0.1:"),
])
def test_a_worker_without_its_service_says_so_in_one_line_and_exits(
        tmp_path: Path, command: list[str], service: str) -> None:
    mqtt, kafka, influx, eth = free_ports(4)  # nothing listens on them
    env = _env(tmp_path, mqtt_port=mqtt, kafka_port=kafka, influx_port=influx, eth_port=eth)
    started = time.monotonic()
    result = _vitalchain(env, *command, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert elapsed < 15, f"{command} took {elapsed:.1f}s to give up"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: {service}") and "`vitalchain stack up`" in lines[0], lines[0]
    assert "Traceback" not in result.stderr and "ECONNREFUSED" not in result.stderr


def test_stack_down_stops_hand_started_workers_then_the_services(fresh_stack) -> None:
    from tests.test_api_http import seal, vitals_at
    from vitalchain.storage.ledger import Ledger

    stack = fresh_stack(("mosquitto", "kafka", "influxdb"))
    env = _stack_env(stack)
    env["VITALCHAIN_API_PORT"] = str(free_port())
    logs = stack.settings.state_dir / "hand"
    logs.mkdir()
    workers = {}
    for kind, args in {"stream": ["stream", "run"], "deadletters": ["deadletters", "run"],
                       "bridge": ["bridge", "run"], "api": ["api"]}.items():
        with open(logs / f"{kind}.log", "w") as out:  # like `vitalchain ... &` in a shell
            workers[kind] = subprocess.Popen([sys.executable, "-m", "vitalchain", *args], env=env,
                                             stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
    wait_until(lambda: {w.kind for w in running_workers(stack.settings)} == set(workers), 60,
               "every worker's record")
    wait_until(lambda: _vitalchain(env, "bridge", "wait", "--timeout", "5").returncode == 0, 60,
               "`bridge wait` to see the bridge subscribed")
    status = _vitalchain(env, "stack", "status")
    rows = {line.split()[1]: line.split()[2] for line in status.stdout.splitlines() if line.startswith("worker")}
    assert rows == {"bridge": "subscribed", "stream": "running", "deadletters": "running", "api": "running"}

    # A reading sealed while the services run: its proof needs InfluxDB later.
    reading = {"device_id": "dev-x", "patient_id": "pat-x", "seq": 0,
               "ts_us": time.time_ns() // 1000, "vitals": vitals_at(0)}
    with Ledger(stack.settings.ledger_path) as ledger:
        seal(stack.settings, ledger, [reading], 0)

    started = time.monotonic()
    down = _vitalchain(env, "stack", "down", timeout=120)
    elapsed = time.monotonic() - started
    assert down.returncode == 0, down.stderr
    for kind, process in workers.items():
        assert process.poll() is not None, f"{kind} still runs after `stack down`"
        assert f"stopping worker {kind} (pid {process.pid}" in down.stderr
        log = (logs / f"{kind}.log").read_text()
        assert "Traceback" not in log, f"{kind}:\n{log[-3000:]}"
    assert elapsed < 60, f"stack down took {elapsed:.1f}s"
    assert running_workers(stack.settings) == [] and stack.pid("kafka") is None
    print(f"stack down with 4 hand-started workers: {elapsed:.1f}s", *down.stderr.splitlines(), sep="\n")

    proof = _vitalchain(env, "proof", "dev-x", "0")
    assert proof.returncode == 1
    assert "Traceback" not in proof.stderr
    assert proof.stderr.startswith("Error: ") and "InfluxDB" in proof.stderr, proof.stderr


def test_deadletters_list_shows_what_the_archiver_stored(isolated) -> None:
    import asyncio
    import base64

    from vitalchain.ingest.deadletters import rejected_point
    from vitalchain.storage.influx import InfluxClient

    now = time.time_ns() // 1000
    records = [(b"dev-1", {"reason": "schema", "stage": "bridge", "detail": "hr: not a number",
                           "payload_b64": base64.b64encode(b'{"hr":"x"}').decode(), "received_us": now - 2}),
               (b"dev-2", {"reason": "rate_limited", "stage": "bridge", "detail": "over 50/s",
                           "payload_b64": "", "received_us": now - 1})]

    async def write() -> None:
        async with InfluxClient(isolated) as influx:
            await influx.write([rejected_point(k, json.dumps(r).encode(), now) for k, r in records])

    asyncio.run(write())
    s = isolated
    env = {"VITALCHAIN_STATE_DIR": str(s.state_dir), "VITALCHAIN_INFLUX_PORT": str(s.influx_port),
           "VITALCHAIN_INFLUX_DB": s.influx_db}
    result = CliRunner().invoke(main, ["deadletters", "list"], env=env)
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(r[1], r[2], r[4]) for r in rows] == [("dev-2", "rate_limited", "over 50/s"),
                                                  ("dev-1", "schema", "hr: not a number")]
    one = CliRunner().invoke(main, ["deadletters", "list", "--reason", "schema", "--json"], env=env)
    assert [json.loads(line)["device_id"] for line in one.stdout.splitlines()] == ["dev-1"]
    none = CliRunner().invoke(main, ["deadletters", "list", "--device", "dev-3"], env=env)
    assert none.exit_code == 0 and none.stdout == "" and "no rejected input archived" in none.stderr
    bad = CliRunner().invoke(main, ["deadletters", "list", "--device", "a b"], env=env)
    assert bad.exit_code == 2 and "Traceback" not in bad.output


@pytest.mark.parametrize("kind", ["stream", "deadletters"])
def test_a_worker_whose_kafka_is_gone_says_so_once_and_exits(fresh_stack, kind: str) -> None:
    stack = fresh_stack(("kafka", "influxdb"))
    env = _stack_env(stack)
    log = stack.settings.state_dir / f"{kind}.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "vitalchain", kind, "run"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: [w for w in running_workers(stack.settings) if w.kind == kind], 60,
                   f"the {kind} worker's record")
        if kind == "stream":
            wait_until(lambda: "stream: in=" in log.read_text(), 60, "the stream's first progress line")
        before = len(log.read_text().splitlines())
        stack.kill("kafka")
        killed = time.monotonic()
        code = process.wait(timeout=60)
        elapsed = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
    after = log.read_text().splitlines()[before:]
    print(f"{kind}: exited {code} {elapsed:.1f}s after Kafka was killed, {len(after)} lines:", *after, sep="\n")
    gone = [line for line in after if "stopping: Kafka does not answer" in line]
    assert len(gone) == 1 and "`vitalchain stack up`" in gone[0], "\n".join(after[-20:])
    assert "Traceback" not in "\n".join(after), "\n".join(after[-40:])
    assert elapsed < 35, f"{kind} took {elapsed:.1f}s to exit"
    assert len(after) < 60, "\n".join(after[-20:])


def _listener(port: int = 0):  # type: ignore[no-untyped-def]
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_the_watchdog_rides_out_a_restart_and_stops_on_a_service_that_stays_gone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vitalchain.app.watchdog import watch

    kafka, influx = _listener(), _listener()
    settings = load_settings(environ={}, state_dir=tmp_path, kafka_port=kafka.getsockname()[1],
                             influx_port=influx.getsockname()[1])
    reactions: list[str] = []
    watch(settings, "test", "kafka", "influxdb", grace=2.0, interval=0.1, react=reactions.append)
    port = kafka.getsockname()[1]
    kafka.close()  # a restart: back within the grace period
    wait_until(lambda: "Kafka does not answer" in capsys.readouterr().err, 10, "the first line")
    kafka = _listener(port)
    wait_until(lambda: "every service answers again" in capsys.readouterr().err, 10, "the all-clear")
    assert reactions == []
    influx.close()  # gone for good
    wait_until(lambda: reactions, 10, "the watchdog to give up")
    assert reactions[0].startswith("test: stopping: InfluxDB does not answer at 127.0.0.1:")
    assert "`vitalchain stack up`" in reactions[0]
    kafka.close()
