"""``vitalchain demo``: the whole pipeline on the local stack, end to end, in about a minute.

Starts the stack if it is not running (or uses the one already up), deploys the anchor contract if
none is recorded, provisions a few dozen wearables, runs two bridges (each over its own device
shards, docs/DEVICES.md), a stream worker and the
anchoring worker as the same processes an operator runs, drives the fleet with a live progress
line, then proves one reading whose checkpoint is anchored and verifies that proof against the
chain with ``vitalchain verify --rpc``.

One demo patient (the first wearable's) deteriorates on a schedule fitted to the run: NEWS2 goes
amber, then red, so whoever watches the dashboard sees what an alarm looks like.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import httpx

from vitalchain.app.pipeline import Pipeline, start_bridges, wait_bridges
from vitalchain.config import Settings
from vitalchain.storage.influx import InfluxError, rows_of

Say = Callable[[str], None]


class Progress:
    """One status line, rewritten in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tty = sys.stderr.isatty()
        self.last_print = 0.0

    def stored(self) -> int:
        try:
            response = httpx.post(f"{self.settings.influx_url}/query", timeout=5, data={
                "db": self.settings.influx_db, "q": "SELECT count(seq) FROM readings"})
            rows = rows_of(response.json())
        except (httpx.HTTPError, InfluxError, ValueError):
            return 0
        return int(rows[0]["count"]) if rows else 0

    def sealed(self) -> int:
        from vitalchain.storage.ledger import Ledger

        if not self.settings.ledger_on_postgres and not self.settings.ledger_path.exists():
            return 0
        with Ledger(self.settings.ledger_target) as ledger:
            return ledger.log_size()

    def anchored(self) -> tuple[int, int]:
        """(anchored checkpoints, windows they cover)."""
        from vitalchain.storage.anchors import AnchorStore

        if not self.settings.ledger_on_postgres and not self.settings.ledger_path.exists():
            return 0, 0
        with AnchorStore(self.settings.ledger_target) as store:
            done = store.checkpoints(self.settings.anchor_contract, "anchored")
        return len(done), max((c.size for c in done), default=0)

    def line(self, published: int, acked: int) -> str:
        anchored, covered = self.anchored()
        return (f"published {published:6d}  acknowledged {acked:6d}  stored {self.stored():6d}  "
                f"sealed windows {self.sealed():4d}  anchored checkpoints {anchored:3d} "
                f"(covering {covered} windows)")

    def show(self, published: int, acked: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and not self.tty and now - self.last_print < 5:
            return
        self.last_print = now
        text = self.line(published, acked)
        if self.tty:
            click.echo(f"\r{text}", err=True, nl=False)
        else:
            click.echo(text, err=True)


def run_demo(settings: Settings, devices: int, seconds: float, rate: float, say: Say,
             out_dir: Path | None = None, serve: bool = False, bridges: int = 2) -> int:
    from vitalchain.anchor.deploy import deploy
    from vitalchain.app.stack.supervisor import Stack
    from vitalchain.devices.fleet import run_fleet
    from vitalchain.devices.registry import provision_devices

    say("1/5 local stack")
    Stack(settings, log=say).up()

    say("2/5 anchor contract")
    result = deploy(settings)
    say(f"    {result.message or result.address}")
    settings = settings.with_overrides(anchor_contract=result.address)

    say(f"3/5 provisioning {devices} wearables")
    identities = provision_devices(settings, devices, prefix="demo")

    access = _demo_users(settings, identities)
    from vitalchain.devices.physiology import Deterioration

    declining = identities[0].patient_id
    script = Deterioration.over(seconds)
    say(f"    patient {declining} deteriorates: NEWS2 amber from about {script.amber_s:.0f}s, "
        f"red from about {script.red_s:.0f}s into the run")
    progress = Progress(settings)
    with Pipeline(settings) as pipeline:
        start_bridges(pipeline, bridges)
        for kind in ("stream", "anchor", "deadletters"):
            pipeline.start(kind)
        pipeline.start("api", None, "--port", str(settings.api_port))
        dashboard = f"http://{settings.host}:{settings.api_port}/"
        _wait_api(settings, pipeline)
        say(f"    dashboard and API: {dashboard}  (OpenAPI: {dashboard}docs)")
        for role, token in access.items():
            say(f"    {role} token: {token}")
        if not serve:
            say(f"    (served only while the demo runs, about {seconds + 30:.0f}s more; "
                f"`{command_name()} demo --serve` keeps it until Ctrl-C)")
        baseline = progress.stored()
        _wait_flowing(settings, identities[0], progress, baseline, pipeline, say,
                      bridges=bridges)
        baseline, sealed_before = progress.stored(), progress.sealed()
        say(f"4/5 running the pipeline for {seconds:.0f}s (logs in {settings.logs_dir})")

        def on_progress(stats) -> None:  # type: ignore[no-untyped-def]
            pipeline.check_alive()
            progress.show(stats.published, stats.acked)

        stats = asyncio.run(run_fleet(settings, identities, rate=rate, duration=seconds,
                                      on_progress=on_progress, scripts={declining: script}))
        progress.show(stats.published, stats.acked, force=True)
        if progress.tty:
            click.echo("", err=True)
        say("    waiting until every acknowledged reading is stored and sealed, and a checkpoint "
            "covering it is anchored")
        target = baseline + stats.acked
        deadline = time.monotonic() + 180
        picked = None
        while time.monotonic() < deadline:
            pipeline.check_alive()
            progress.show(stats.published, stats.acked)
            picked = _anchored_reading(settings, sealed_before) if progress.stored() >= target else None
            if picked:
                break
            time.sleep(1)
        progress.show(stats.published, stats.acked, force=True)
        if progress.tty:
            click.echo("", err=True)
        if picked is None:
            say("no reading reached an anchored checkpoint in time; see the logs in "
                f"{settings.logs_dir}")
            return 1
        code = _prove(settings, picked, out_dir, say)
        if not serve:
            say(f"the dashboard and API stop with the demo now; the tokens above keep working with "
                f"`{command_name()} api` (or run `{command_name()} demo --serve`)")
        if serve:
            say(f"serving until Ctrl-C: {dashboard} (the wearables keep publishing)")
            try:
                # a new fleet starts the patients' clocks again: the declining one stays red
                still_red = Deterioration.over(seconds, offset_s=-seconds)
                asyncio.run(run_fleet(settings, identities, rate=rate,
                                      on_progress=lambda s: progress.show(s.published, s.acked),
                                      scripts={declining: still_red}))
            except KeyboardInterrupt:
                say("stopping the pipeline")
        return code


def _prove(settings: Settings, picked: tuple[str, int], out_dir: Path | None, say: Say) -> int:
    """Write the reading's bundle and verify it the way an auditor would: a separate
    ``vitalchain verify --rpc`` process that trusts nothing but the bundle and the chain."""
    device_id, seq = picked
    say(f"5/5 proof for reading {device_id} #{seq}")
    from vitalchain.anchor.proofs import build_proof

    bundle = build_proof(settings, device_id, seq)
    out_dir = out_dir or settings.state_dir / "proofs"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{device_id}-{seq}.json"
    path.write_text(json.dumps(bundle, indent=2) + "\n")
    verdict = subprocess.run([sys.executable, "-m", "vitalchain", "verify", "--rpc",
                              settings.eth_rpc_url, str(path)], capture_output=True, text=True)
    say(f"    bundle:  {path}")
    say(f"    verify:  {command_name()} verify --rpc {settings.eth_rpc_url} {path}")
    for line in (verdict.stdout + verdict.stderr).strip().splitlines():
        say(f"    {line}")
    say("    verdict: " + ("VALID" if verdict.returncode == 0 else f"INVALID (exit {verdict.returncode})"))
    say(f"the stack is still running: `{command_name()} stack status`, `{command_name()} stack down`")
    return verdict.returncode


def command_name() -> str:
    """How the user can call vitalchain from here: ``vitalchain`` when that is on PATH and is this
    installation, else the path of this virtualenv's script (``.venv/bin/vitalchain`` from the
    checkout), so a command the demo prints can be pasted as it is."""
    script = Path(sys.executable).parent / "vitalchain"
    if not script.exists():
        return f"{sys.executable} -m vitalchain"
    found = shutil.which("vitalchain")
    if found and Path(found).resolve() == script.resolve():
        return "vitalchain"
    try:
        return str(script.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _demo_users(settings: Settings, identities) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A clinician granted every demo patient for a day, and an auditor; fresh tokens each run
    (tokens are stored hashed, so earlier ones cannot be shown again)."""
    from vitalchain.api.app import api_path
    from vitalchain.storage.apistore import ApiStore

    run = time.strftime("%Y%m%d%H%M%S")
    store = ApiStore(api_path(settings))
    try:
        clinician = store.add_user(f"demo-clinician-{run}", "clinician")
        auditor = store.add_user(f"demo-auditor-{run}", "auditor")
        until = int((time.time() + 86400) * 1_000_000)
        for patient in sorted({i.patient_id for i in identities}):
            store.add_grant(patient, f"demo-clinician-{run}", until, "vitalchain demo")
    finally:
        store.close()
    return {f"clinician demo-clinician-{run}": clinician, f"auditor demo-auditor-{run}": auditor}


def _wait_api(settings: Settings, pipeline: Pipeline, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipeline.check_alive()
        try:
            if httpx.get(f"http://{settings.host}:{settings.api_port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise click.ClickException(f"the API did not answer on port {settings.api_port} within {timeout:.0f}s")


def _wait_flowing(settings: Settings, probe, progress: Progress, baseline: int,  # type: ignore[no-untyped-def]
                  pipeline: Pipeline, say: Say, timeout: float = 90.0, bridges: int = 1) -> None:
    """Send probe readings until one is stored: Mosquitto acknowledges and drops what devices
    publish before the bridge's first subscription exists, so the fleet waits for the path."""
    from vitalchain.devices.fleet import run_fleet

    say("    waiting for the bridges and the stream worker to be ready (probe readings)")
    deadline = time.monotonic() + timeout
    try:
        wait_bridges(settings, bridges, pipeline, timeout)
    except TimeoutError as exc:
        raise click.ClickException(f"{exc}; see the logs in {settings.logs_dir}") from None
    while time.monotonic() < deadline:
        pipeline.check_alive()
        asyncio.run(run_fleet(settings, [probe], rate=5.0, count=1, drain_timeout=5.0))
        settle = time.monotonic() + settings.idle_seal_seconds + 3
        while time.monotonic() < settle:
            if progress.stored() > baseline:
                return
            time.sleep(0.25)
    raise click.ClickException(f"no probe reading reached InfluxDB within {timeout:.0f}s; "
                               f"see the logs in {settings.logs_dir}")


def _anchored_reading(settings: Settings, after: int) -> tuple[str, int] | None:
    """A (device, seq) of a window sealed during this run (log index >= ``after``) that lies
    inside an anchored checkpoint, if any."""
    from vitalchain.storage.anchors import AnchorStore
    from vitalchain.storage.ledger import Ledger

    with AnchorStore(settings.ledger_target) as store:
        latest = store.latest(settings.anchor_contract, "anchored")
    if latest is None or latest.size <= after:
        return None
    with Ledger(settings.ledger_target) as ledger:
        for index in range(latest.size - 1, after - 1, -1):
            window = ledger.window_by_index(index)
            if window is not None and window.header.get("format") == "vitalchain-window/1" \
                    and window.header.get("devices"):
                device_id, span = sorted(window.header["devices"].items())[0]
                return device_id, int(span["first_seq"])
    return None


def register(main: click.Group) -> None:
    @main.command()
    @click.option("--devices", default=30, show_default=True, help="Simulated wearables.")
    @click.option("--seconds", default=60.0, show_default=True, help="How long the fleet publishes.")
    @click.option("--rate", default=1.0, show_default=True, help="Readings per second per device.")
    @click.option("--serve", is_flag=True,
                  help="Afterwards keep the wearables, pipeline and dashboard running until Ctrl-C.")
    @click.option("--bridges", type=click.IntRange(1), default=2, show_default=True,
                  help="MQTT->Kafka bridges, splitting the device shards between them "
                       "(at most VITALCHAIN_MQTT_SHARDS).")
    @click.pass_obj
    def demo(settings: Settings, devices: int, seconds: float, rate: float, serve: bool,
             bridges: int) -> None:
        """Run the whole pipeline end to end on the local stack and verify one proof."""
        if bridges > settings.mqtt_shards:
            raise click.BadParameter(f"at most {settings.mqtt_shards} (VITALCHAIN_MQTT_SHARDS)",
                                     param_hint="--bridges")
        code = run_demo(settings, devices, seconds, rate, say=lambda m: click.echo(m, err=True),
                        serve=serve, bridges=bridges)
        sys.exit(code)
