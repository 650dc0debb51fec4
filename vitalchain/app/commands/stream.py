"""``vitalchain stream run``: the window-sealing workers (and the bridge's commands, if present)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import click

from vitalchain.config import Settings


@click.group("stream")
def stream_group() -> None:
    """The Faust stream that seals readings into hashed windows."""


@stream_group.command("run")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes sharing the raw topic's partitions (one consumer group).")
@click.option("--worker-name", default=None,
              help="Name of this worker (Faust data dir); default: the process id.")
@click.option("--progress-seconds", type=click.FloatRange(0.1), default=2.0, show_default=True,
              help="How often to print the progress line.")
@click.option("--loglevel", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_obj
def run(settings: Settings, workers: int, worker_name: str | None, progress_seconds: float,
        loglevel: str) -> None:
    """Consume the raw topic, cut windows per partition, seal them (InfluxDB + ledger).

    Prints a progress line (readings in, sealed windows, duplicates, conflicts, late) to stderr.
    """
    from vitalchain.app.preflight import require
    from vitalchain.app.workers import register_worker

    require(settings, "kafka", "influxdb")
    if workers == 1:
        from vitalchain.app.watchdog import watch
        from vitalchain.ingest.stream import run_worker

        record = register_worker(settings, "stream")  # the parent of --workers N is not one
        watch(settings, "stream", "kafka", "influxdb")
        try:
            run_worker(settings, worker_name, loglevel, progress_seconds)
        finally:
            record.remove()
        return
    children = [
        subprocess.Popen([sys.executable, "-c", "from vitalchain.app.cli import main; main()", "stream", "run",
                          "--worker-name", f"{worker_name or os.getpid()}-{i}",
                          "--progress-seconds", str(progress_seconds), "--loglevel", loglevel])
        for i in range(workers)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    if any(codes):
        raise SystemExit(max(abs(c) for c in codes))


def register(main: click.Group) -> None:
    main.add_command(stream_group)
