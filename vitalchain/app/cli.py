"""The ``vitalchain`` command: a thin layer over the services.

Each command group lives in its own module (``vitalchain.app.commands.*``, the stack's CLI, the
demo) and is imported only when it runs: importing them all costs seconds (web3, Faust, FastAPI),
and ``vitalchain --help`` or ``vitalchain verify`` must start at once. :data:`COMMANDS` is the
index: each command's module and the one-line summary ``--help`` shows without importing it
(tests/test_cli.py checks every summary against the command's own help).
"""

from __future__ import annotations

import importlib

import click

from vitalchain.app.production import check_production
from vitalchain.config import ConfigError, load_settings
from vitalchain.errors import Unavailable, VitalchainError

# command -> (module whose ``register(group)`` adds it, its one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "anchor": ("vitalchain.app.commands.anchor", "Anchor checkpoints of the window log on Ethereum."),
    "api": ("vitalchain.app.commands.api", "Serve the clinician/auditor HTTP API (OpenAPI at /docs)."),
    "audit": ("vitalchain.app.commands.audit",
              "Check every reading, window and checkpoint of a time range against ledger and chain."),
    "bridge": ("vitalchain.app.commands.bridge",
               "MQTT→Kafka bridge: validated readings to the raw topic, rejects to the dead-letter topic."),
    "deadletters": ("vitalchain.app.commands.deadletters",
                    "Rejected readings: archive the dead-letter topic (`run`), show what was archived (`list`)."),
    "demo": ("vitalchain.app.demo", "Run the whole pipeline end to end on the local stack and verify one proof."),
    "devices": ("vitalchain.app.commands.devices", "Simulated wearables publishing vital signs over MQTT."),
    "grants": ("vitalchain.app.commands.api", "Patient consent: which clinician may see which patient, until when."),
    "patients": ("vitalchain.app.commands.patients",
                 "Patients: who the provisioned devices are on (grants name these ids)."),
    "proof": ("vitalchain.app.commands.anchor",
              "Proofs: `proof DEVICE SEQ`, `proof --at TS_US DEVICE`, `proof consistency S1 S2`."),
    "stack": ("vitalchain.app.stack.cli",
              "Start, inspect and stop the local services (MQTT, Kafka, InfluxDB, Ethereum)."),
    "stream": ("vitalchain.app.commands.stream", "The Faust stream that seals readings into hashed windows."),
    "users": ("vitalchain.app.commands.api", "API users (bearer tokens)."),
    "verify": ("vitalchain.app.commands.verify",
               "Verify proof documents (files, or '-' / nothing for stdin): reading bundles"),
}

# Commands that run in production mode without its secrets: the local stack and the offline verifier.
_NO_SECRETS_NEEDED = frozenset({"stack", "verify"})


class LazyGroup(click.Group):
    """A group whose subcommands are imported when used; ``--help`` lists them from :data:`COMMANDS`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        holder = click.Group()
        importlib.import_module(COMMANDS[cmd_name][0]).register(holder)
        return holder.commands[cmd_name]

    def invoke(self, ctx: click.Context) -> object:
        """An expected failure (vitalchain's error family: bad input, nothing found, a service
        down, a refusal) ends in one ``Error:`` line and exit 1, never a traceback."""
        try:
            return super().invoke(ctx)
        except VitalchainError as exc:
            message = str(exc).strip("'\"")
            if isinstance(exc, Unavailable) and "vitalchain stack" not in message:
                message += " (is the local stack up? `vitalchain stack status`)"
            raise click.ClickException(message) from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, click.utils.make_default_short_help(summary, limit))
                for name, (_, summary) in sorted(COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.pass_context
def main(ctx: click.Context) -> None:
    """vitalchain: vital signs in, provable readings out."""
    try:
        ctx.obj = load_settings()
        if ctx.invoked_subcommand not in _NO_SECRETS_NEEDED:
            check_production(ctx.obj)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
