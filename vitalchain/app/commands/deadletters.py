"""``vitalchain deadletters run``: the dead-letter archiver in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading

import click

from vitalchain.config import Settings


@click.group("deadletters")
def deadletters_group() -> None:
    """Rejected readings: archive the dead-letter topic into InfluxDB measurement ``rejected``."""


@deadletters_group.command("run")
@click.option("--progress-seconds", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="How often to log how many records were archived.")
@click.pass_obj
def run_command(settings: Settings, progress_seconds: float) -> None:
    """Consume the dead-letter topic (group vitalchain-deadletters), commit after each write."""
    from vitalchain.ingest.deadletters import run

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"deadletters: {settings.kafka_bootstrap} {settings.dlq_topic} -> InfluxDB "
               f"{settings.influx_db}.rejected", err=True)
    run(settings, stop.is_set, progress_seconds)


def register(main: click.Group) -> None:
    main.add_command(deadletters_group)
