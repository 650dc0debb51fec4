"""``vitalchain bridge run``: one bridge instance in the foreground until SIGTERM/SIGINT.

:func:`register` adds these commands to the root group (``vitalchain/app/cli.py``).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

import click

from vitalchain.config import Settings
from vitalchain.core.payload.shards import parse_shards
from vitalchain.errors import VitalchainError
from vitalchain.ingest.bridge import DEFAULT_GROUP, Bridge, BridgeCounters, client_id, forget_session
from vitalchain.ingest.bridge_provision import provision_bridge


def register(group: click.Group) -> None:
    group.add_command(bridge)


@click.group()
def bridge() -> None:
    """MQTT→Kafka bridge: validated readings to the raw topic, rejects to the dead-letter topic."""


@bridge.command("run")
@click.option("--instance", type=click.IntRange(0, 9999), default=0, show_default=True,
              help="Instance number; the MQTT user, client id and persistent session are "
                   "vitalchain-bridge-<instance>, so keep it stable per instance. In dev mode a "
                   "missing user is provisioned (see `bridge provision`).")
@click.option("--group", default=None,
              help=f"Join a shared-subscription group (e.g. {DEFAULT_GROUP}) so several bridges split "
                   "the devices' messages. Caveat: Mosquitto 2.0 does not restore shared subscriptions "
                   "after a broker restart, so messages published before the bridges re-subscribe are "
                   "lost; the default plain subscription loses nothing (docs/DECISIONS.md D6).")
@click.option("--shards", "shard_list", default="all", show_default=True,
              help="Device shards this bridge reads, e.g. '0,2' or '0-1' (each a plain "
                   "vitals/<shard>/+ subscription; shard 0's owner also reads the former "
                   "vitals/+). Give every bridge its own shards and together all of "
                   "0..VITALCHAIN_MQTT_SHARDS-1 (docs/DEVICES.md).")
@click.option("--exclusive", is_flag=True,
              help="Plain subscriptions, no group (the default; kept for explicit scripts).")
@click.option("--max-inflight", type=click.IntRange(1, 65535), default=1000, show_default=True,
              help="Most unacknowledged MQTT messages held at once: sent as MQTT 5 Receive "
                   "Maximum, and enforced by the bridge itself when a broker sends more "
                   "(Mosquitto 2.0.11 does with a backlog; docs/DECISIONS.md D18).")
@click.option("--progress-every", type=click.FloatRange(min=0.1), default=5.0,
              show_default=True, help="Seconds between progress lines on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Log each rejected message.")
@click.pass_obj
def run(settings: Settings, instance: int, group: str, shard_list: str, exclusive: bool,
        max_inflight: int, progress_every: float, verbose: bool) -> None:
    """Run one bridge instance until SIGTERM or SIGINT, then flush, ack and disconnect."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR if not verbose else logging.WARNING)
    if exclusive and group:
        raise click.UsageError("--exclusive and --group exclude each other")
    if group and shard_list != "all":
        raise click.UsageError("--group reads every shard; --shards and --group exclude each other")
    try:
        shards = None if group else parse_shards(shard_list, settings.mqtt_shards)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shards") from exc
    from vitalchain.app.preflight import require
    from vitalchain.app.workers import register_worker

    require(settings, "kafka", "mqtt")
    try:
        if settings.mode == "dev" and provision_bridge(settings, instance):
            click.echo(f"bridge: provisioned MQTT user {client_id(instance)}", err=True)
        the_bridge = Bridge(settings, instance=instance, group=group, shards=shards,
                            max_inflight=max_inflight)
    except (KeyError, ValueError, RuntimeError, VitalchainError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc

    def on_signal(signum: int, frame: FrameType | None) -> None:
        click.echo(f"bridge: {signal.Signals(signum).name}, stopping", err=True)
        the_bridge.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def progress(counters: BridgeCounters) -> None:
        click.echo(f"bridge {client_id(instance)}: {the_bridge.progress_line()}", err=True)

    click.echo(f"bridge {client_id(instance)}: {settings.mqtt_url} {the_bridge.subscription} -> "
               f"kafka {settings.kafka_bootstrap} {settings.raw_topic} (dead letters: "
               f"{settings.dlq_topic})", err=True)
    worker = threading.Thread(target=the_bridge.run, args=(progress, progress_every),
                              name="bridge")
    record = register_worker(settings, "bridge")
    worker.start()
    # The main thread only waits, so signal handlers run promptly.
    while worker.is_alive():
        worker.join(timeout=0.5)
        if the_bridge.subscribed.is_set():
            record.mark_ready()
    record.remove()


@bridge.command("wait")
@click.option("--timeout", type=click.FloatRange(0.1), default=60.0, show_default=True,
              help="Seconds to wait before giving up (exit 1).")
@click.option("--count", type=click.IntRange(1), default=1, show_default=True,
              help="Bridges that must be subscribed (one per shard set: a device's readings "
                   "are dropped until its shard's bridge first subscribed).")
@click.pass_obj
def wait(settings: Settings, timeout: float, count: int) -> None:
    """Wait until a bridge of this state folder is subscribed (after `bridge run &`).

    Mosquitto drops what devices publish while no bridge has ever subscribed (the bridge's
    persistent session queues readings only once it exists), so a script starts the devices after
    this returns.
    """
    import time

    from vitalchain.app.workers import running_workers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = [w for w in running_workers(settings, "bridge") if w.ready]
        if len(ready) >= count:
            for worker in ready:
                click.echo(f"bridge ready: {worker.describe()}", err=True)
            return
        time.sleep(0.2)
    running = running_workers(settings, "bridge")
    subscribed = sum(w.ready for w in running)
    raise click.ClickException(
        f"{subscribed or 'no'} bridge(s) of {settings.state_dir} subscribed within "
        f"{timeout:.0f}s, {count} wanted"
        + (f" ({len(running)} running: see its output)" if running else
           ": none is running; start one with `vitalchain bridge run &`"))


@bridge.command("forget-session")
@click.option("--instance", type=click.IntRange(0, 9999), required=True)
@click.pass_obj
def forget(settings: Settings, instance: int) -> None:
    """Delete a retired instance's persistent MQTT session and the messages queued for it."""
    try:
        forget_session(settings, instance)
    except (KeyError, OSError, TimeoutError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc
    click.echo(f"removed the MQTT session of {client_id(instance)}")


@bridge.command("provision")
@click.option("--instance", type=click.IntRange(0, 9999), required=True)
@click.pass_obj
def provision(settings: Settings, instance: int) -> None:
    """Create the MQTT user of one bridge instance (each instance has its own; D7).

    Its password goes to the state folder's secret store, and a running local Mosquitto gets the
    user (role vitalchain-bridge: read access to vitals/#) through its dynamic-security plugin,
    without a reload. A production broker needs the same client created there (docs/DECISIONS.md
    D12).
    """
    try:
        created = provision_bridge(settings, instance)
    except (RuntimeError, VitalchainError) as exc:
        raise click.ClickException(str(exc)) from exc
    state = "created" if created else "already provisioned"
    click.echo(f"MQTT user {client_id(instance)}: {state}")
