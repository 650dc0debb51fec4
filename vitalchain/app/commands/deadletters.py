"""``vitalchain deadletters run``: the dead-letter archiver in the foreground until SIGTERM/SIGINT;
``vitalchain deadletters list``: what it archived (InfluxDB measurement ``rejected``), newest first."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading

import click

from vitalchain.config import Settings


@click.group("deadletters")
def deadletters_group() -> None:
    """Rejected readings: archive the dead-letter topic (`run`), show what was archived (`list`)."""


@deadletters_group.command("run")
@click.option("--progress-seconds", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="How often to log how many records were archived.")
@click.pass_obj
def run_command(settings: Settings, progress_seconds: float) -> None:
    """Consume the dead-letter topic (group vitalchain-deadletters), commit after each write."""
    from vitalchain.app.preflight import require
    from vitalchain.app.workers import register_worker
    from vitalchain.ingest.deadletters import run

    require(settings, "kafka", "influxdb")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"deadletters: {settings.kafka_bootstrap} {settings.dlq_topic} -> InfluxDB "
               f"{settings.influx_db}.rejected", err=True)
    from vitalchain.app.watchdog import watch

    record = register_worker(settings, "deadletters")
    watch(settings, "deadletters", "kafka", "influxdb")
    try:
        run(settings, stop.is_set, progress_seconds)
    finally:
        record.remove()


@deadletters_group.command("list")
@click.option("--device", default=None, help="Only this device's rejects.")
@click.option("--reason", default=None, help="Only this reason (e.g. schema, rate_limited).")
@click.option("--since", default=None, help="ISO 8601 start (default: everything archived).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines with every field (payload base64).")
@click.pass_obj
def list_command(settings: Settings, device: str | None, reason: str | None, since: str | None,
                 limit: int, as_json: bool) -> None:
    """Rejected input archived by `deadletters run`, newest first: when, device, reason, detail."""
    from vitalchain.api.rejected import rejected
    from vitalchain.app.preflight import require
    from vitalchain.core.ids import check_id
    from vitalchain.core.timeutil import MAX_ANY_US, now_us, parse_time_us
    from vitalchain.storage.influx import InfluxClient

    require(settings, "influxdb")
    try:
        devices = None if device is None else [check_id(device, "--device")]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    start_us = 0 if since is None else parse_time_us(since, "--since", max_us=MAX_ANY_US, integers=False)

    async def fetch() -> list[dict]:
        async with InfluxClient(settings) as influx:
            # Up to a day ahead of now: rejects carry the bridge's clock; InfluxDB's int64
            # nanoseconds end in 2262, so "no end" cannot be the far future.
            return await rejected(influx, start_us, now_us() + 86_400_000_000, limit, devices, reason)

    rows = asyncio.run(fetch())
    for row in rows:
        if as_json:
            click.echo(json.dumps(row, sort_keys=True))
        else:
            detail = (row.get("detail") or "").replace("\n", " ")
            click.echo(f"{row['received']}\t{row.get('device_id') or '-'}\t{row.get('reason')}"
                       f"\t{row.get('stage')}\t{detail[:120]}")
    if not rows:
        click.echo("no rejected input archived" + (" matching the filters" if device or reason or since
                                                    else "") +
                   f" in InfluxDB {settings.influx_db}.rejected (`vitalchain deadletters run` "
                   "archives the dead-letter topic there)", err=True)


def register(main: click.Group) -> None:
    main.add_command(deadletters_group)
