"""The ``vitalchain`` command. Each package registers its own subcommands here."""

from __future__ import annotations

import importlib

import click

from vitalchain.config import ConfigError, load_settings
from vitalchain.production import check_production

# (module, function) pairs; each function takes the root group and adds its commands.
_REGISTRARS = (
    ("vitalchain.stack.cli", "register"),
    ("vitalchain.verify.cli", "register"),
    ("devices.cli", "register"),
    ("ingest.cli", "register"),
    ("anchor.cli", "register"),
    ("vitalchain.demo", "register"),
    ("audit.cli", "register"),
    ("api.cli", "register"),
)

# Commands that run in production mode without its secrets: the local stack and the offline verifier.
_NO_SECRETS_NEEDED = frozenset({"stack", "verify"})


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """vitalchain: vital signs in, provable readings out."""
    try:
        ctx.obj = load_settings()
        if ctx.invoked_subcommand not in _NO_SECRETS_NEEDED:
            check_production(ctx.obj)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def _register_all() -> None:
    for module_name, function in _REGISTRARS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue  # that package is not installed in this build
            raise
        getattr(module, function)(main)


_register_all()
