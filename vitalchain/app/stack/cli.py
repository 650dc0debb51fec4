"""``vitalchain stack up | down | status | restart``."""

from __future__ import annotations

import sys

import click

from vitalchain.app.stack.services import SERVICE_NAMES
from vitalchain.app.stack.supervisor import ServiceStartError, Stack
from vitalchain.app.stack.tools import MissingToolError
from vitalchain.config import Settings


def _say(message: str) -> None:
    click.echo(message, err=True)


def register(main: click.Group) -> None:
    @main.group()
    def stack() -> None:
        """Start, inspect and stop the local services (MQTT, Kafka, InfluxDB, Ethereum).

        PostgreSQL too, for the ledger, when VITALCHAIN_LEDGER_URL names 127.0.0.1."""

    @stack.command()
    @click.option("--timeout", default=60.0, show_default=True,
                  help="Seconds each service may take to become usable.")
    @click.pass_obj
    def up(settings: Settings, timeout: float) -> None:
        """Start every service that is not running and wait until all are usable."""
        try:
            Stack(settings, log=_say).up(deadline_s=timeout)
        except (ServiceStartError, MissingToolError) as exc:
            raise click.ClickException(str(exc)) from exc
        _say(f"stack up; state in {settings.state_dir}")

    @stack.command()
    @click.pass_obj
    def down(settings: Settings) -> None:
        """Stop this state folder's workers, then every service; nothing is left running."""
        Stack(settings, log=_say).down()
        _say("stack down")

    @stack.command()
    @click.argument("service", type=click.Choice(SERVICE_NAMES))
    @click.pass_obj
    def restart(settings: Settings, service: str) -> None:
        """Restart one service."""
        try:
            Stack(settings, log=_say).restart(service)
        except (ServiceStartError, MissingToolError) as exc:
            raise click.ClickException(str(exc)) from exc

    @stack.command()
    @click.pass_obj
    def status(settings: Settings) -> None:
        """Show each service, then each running worker; exit 1 when any service is down or unusable."""
        rows = Stack(settings).status()
        for row in rows:
            state = "healthy" if row.healthy else ("UNHEALTHY" if row.running else "DOWN")
            pid = str(row.pid) if row.pid else "-"
            click.echo(f"{row.name:<10} {state:<9} {settings.host}:{row.port:<6} pid {pid:<8} "
                       f"{row.detail}")
        from vitalchain.app.workers import running_workers

        for worker in running_workers(settings):
            # Only the bridge reports readiness (subscribed); of the others we know they run.
            state = ("subscribed" if worker.ready else "starting") if worker.kind == "bridge" else "running"
            click.echo(f"worker     {worker.kind:<11} {state:<10} pid {worker.pid:<8} "
                       f"{' '.join(worker.argv)}")
        if not all(row.healthy for row in rows):
            sys.exit(1)
