"""``vitalchain devices``: provision simulated wearables and run them against the stack's broker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import click

from vitalchain.config import Settings
from vitalchain.core.payload.limits import MAX_BATCH, MIN_BATCH
from vitalchain.core.payload.schema import schema_text
from vitalchain.devices import keys as device_keys
from vitalchain.devices.fleet import FleetStats, run_fleet
from vitalchain.devices.mqtt_auth import ADMIN_USER, MqttCredentials
from vitalchain.devices.mqtt_dynsec import write_config
from vitalchain.devices.physiology import Deterioration
from vitalchain.devices.registry import (
    DeviceIdentity,
    ProvisioningError,
    load_registry,
    provision_devices,
    registry_path,
    revoke_key,
    rotate_key,
)


def _progress_printer(stream: TextIO) -> tuple[Callable[[FleetStats], None], Callable[[], None]]:
    """A progress callback: in place on a terminal, one line per report otherwise (logs, CI)."""
    tty = stream.isatty()
    width = 0

    def show(stats: FleetStats) -> None:
        nonlocal width
        line = stats.line()
        if tty:
            stream.write("\r" + line + " " * max(0, width - len(line)))
            width = len(line)
        else:
            stream.write(line + "\n")
        stream.flush()

    def finish() -> None:
        if tty and width:
            stream.write("\n")
            stream.flush()

    return show, finish


def register(main: click.Group) -> None:
    @main.group("devices")
    def devices_group() -> None:
        """Simulated wearables publishing vital signs over MQTT."""

    @devices_group.command("provision")
    @click.argument("count", type=click.IntRange(1, 100_000))
    @click.option("--prefix", default="wearable", show_default=True,
                  help="Device ids are <prefix>-00001, <prefix>-00002, ...")
    @click.pass_obj
    def provision(settings: Settings, count: int, prefix: str) -> None:
        """Create credentials and registry entries for COUNT devices (idempotent)."""
        before = load_registry(settings)
        try:
            devices = provision_devices(settings, count, prefix)
        except (ProvisioningError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        new = sum(d.device_id not in before for d in devices)
        click.echo(f"{len(devices)} devices ({new} new): {devices[0].device_id} .. "
                   f"{devices[-1].device_id}; registry {registry_path(settings)}")

    @devices_group.command("broker-config")
    @click.argument("path", type=click.Path(dir_okay=False, writable=True, path_type=Path))
    @click.pass_obj
    def broker_config(settings: Settings, path: Path) -> None:
        """Write the dynamic-security file a Mosquitto not started by `stack up` starts from.

        Every user of this state folder's credential store with its role, and the admin user
        that later provisioning signs in as (docs/DECISIONS.md D12). It holds password hashes,
        never passwords, and is written with mode 0600; the broker must be able to rewrite it.
        """
        creds = MqttCredentials(settings.state_dir)
        users = creds.users()
        write_config(path, users, creds.admin_password(), settings.mqtt_shards)
        click.echo(f"{path}: {len(users)} users and the admin {ADMIN_USER}")

    @devices_group.command("schema")
    def schema() -> None:
        """Print the JSON Schema every device message must satisfy."""
        click.echo(schema_text(), nl=False)

    @devices_group.command("run")
    @click.option("--devices", "n_devices", type=click.IntRange(1, 100_000), default=10,
                  show_default=True, help="How many devices (provisioned on demand).")
    @click.option("--prefix", default="wearable", show_default=True)
    @click.option("--rate", type=click.FloatRange(min=0.001), default=1.0, show_default=True,
                  help="Readings per second per device.")
    @click.option("--duration", type=click.FloatRange(min=0), default=None,
                  help="Seconds to sample (default: until Ctrl-C).")
    @click.option("--count", type=click.IntRange(min=0), default=None,
                  help="Readings per device, instead of --duration.")
    @click.option("--batch", type=click.IntRange(MIN_BATCH, MAX_BATCH), default=1,
                  show_default=True, help="Readings per MQTT message.")
    @click.option("--seed", type=int, default=0, show_default=True,
                  help="Seed of the simulated physiology.")
    @click.option("--buffer", "buffer_limit", type=click.IntRange(min=1), default=10_000,
                  show_default=True, help="Unacknowledged readings each device keeps.")
    @click.option("--episodes-per-hour", type=click.FloatRange(min=0), default=1.0,
                  show_default=True, help="Mean rate of clinical episodes per patient.")
    @click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
                  help="Seconds between progress reports.")
    @click.option("--deteriorate", "declining", default=None, metavar="PATIENT",
                  help="A patient of these devices whose NEWS2 goes amber, then red (scripted).")
    @click.option("--deteriorate-over", type=click.FloatRange(min=1), default=600.0,
                  show_default=True, help="Seconds the deterioration takes (amber by 40 %, red by 80 %).")
    @click.pass_obj
    def run(settings: Settings, n_devices: int, prefix: str, rate: float,
            duration: float | None, count: int | None, batch: int, seed: int,
            buffer_limit: int, episodes_per_hour: float, interval: float,
            declining: str | None, deteriorate_over: float) -> None:
        """Run devices against the broker until --duration/--count, then drain and summarise."""
        if duration is not None and count is not None:
            raise click.UsageError("give --duration or --count, not both")
        if buffer_limit < batch:
            raise click.UsageError("--buffer must hold at least one --batch")
        try:
            devices = provision_devices(settings, n_devices, prefix)
        except (ProvisioningError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        scripts = {}
        if declining is not None:
            patients = sorted({d.patient_id for d in devices})
            if declining not in patients:
                raise click.UsageError(f"--deteriorate {declining!r} is not a patient of these "
                                       f"devices ({', '.join(patients[:5])}{', ...' if len(patients) > 5 else ''})")
            scripts[declining] = Deterioration.over(deteriorate_over)
            click.echo(f"patient {declining} deteriorates: NEWS2 amber from about "
                       f"{scripts[declining].amber_s:.0f}s, red from about "
                       f"{scripts[declining].red_s:.0f}s", err=True)
        show, finish = _progress_printer(click.get_text_stream("stderr"))
        stats = asyncio.run(_run(settings, devices, rate, duration, count, batch, seed,
                                 buffer_limit, episodes_per_hour, interval, show, scripts))
        finish()
        click.echo(f"devices       {stats.devices}\n"
                   f"elapsed       {stats.elapsed_s:.1f} s\n"
                   f"generated     {stats.generated}\n"
                   f"published     {stats.published} readings in {stats.messages} messages\n"
                   f"acknowledged  {stats.acked} ({stats.ack_rate:.0f} readings/s)\n"
                   f"buffered      {stats.buffered}\n"
                   f"dropped       {stats.dropped}\n"
                   f"rejected      {stats.rejected}")
        for device_id, error in sorted(stats.errors.items())[:5]:
            click.echo(f"  {device_id}: {error}", err=True)
        if stats.buffered or stats.rejected:
            raise click.ClickException(
                f"{stats.buffered + stats.rejected} readings were not acknowledged")

    @devices_group.command("keys")
    @click.argument("device_id", required=False)
    @click.pass_obj
    def keys(settings: Settings, device_id: str | None) -> None:
        """List device signing keys (public parts) and whether each is active or revoked."""
        for device, recs in sorted(device_keys.records(settings).items()):
            if device_id is not None and device != device_id:
                continue
            for rec in recs:
                state = "active" if rec.revoked_seq is None else f"revoked (entry {rec.revoked_seq})"
                click.echo(f"{device}  {rec.key_id}  registered (entry {rec.registered_seq})  {state}")

    @devices_group.command("rotate-key")
    @click.argument("device_id")
    @click.pass_obj
    def rotate_key_cmd(settings: Settings, device_id: str) -> None:
        """Give DEVICE_ID a new signing key and revoke the old one (both logged in the window
        log; readings signed with the old key stay verifiable)."""
        try:
            entry = rotate_key(settings, device_id)
        except (ProvisioningError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{device_id}: new key {entry['key_id']} (entry {entry['seq']})")

    @devices_group.command("revoke-key")
    @click.argument("device_id")
    @click.pass_obj
    def revoke_key_cmd(settings: Settings, device_id: str) -> None:
        """Revoke DEVICE_ID's signing key: the bridge refuses its messages (bad_signature)."""
        try:
            entry = revoke_key(settings, device_id)
        except (ProvisioningError, device_keys.DeviceKeyError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{device_id}: key {entry['key_id']} revoked (entry {entry['seq']})")

    _ = (provision, broker_config, schema, run, keys, rotate_key_cmd, revoke_key_cmd)


async def _run(settings: Settings, devices: list[DeviceIdentity], rate: float, duration: float | None,
               count: int | None, batch: int, seed: int, buffer_limit: int,
               episodes_per_hour: float, interval: float,
               show: Callable[[FleetStats], None],
               scripts: dict[str, Deterioration] | None = None) -> FleetStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    if duration is None and count is None:
        print("running until Ctrl-C", file=sys.stderr)
    try:
        return await run_fleet(settings, devices, rate, duration, count, batch, seed,
                               show,
                               buffer_limit=buffer_limit, progress_interval=interval,
                               track_acked=False, episodes_per_hour=episodes_per_hour,
                               stop=stop, drain_timeout=30.0, scripts=scripts)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
