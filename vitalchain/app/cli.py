"""The ``vitalchain`` command: a thin layer over the services; each module of ``vitalchain.app.commands``
(and the stack's CLI) adds its own subcommands."""

from __future__ import annotations

import importlib

import click

from vitalchain.app.production import check_production
from vitalchain.config import ConfigError, load_settings

# (module, function) pairs; each function takes the root group and adds its commands.
_REGISTRARS = (
    ("vitalchain.app.stack.cli", "register"),
    ("vitalchain.app.commands.verify", "register"),
    ("vitalchain.app.commands.devices", "register"),
    ("vitalchain.app.commands.stream", "register"),
    ("vitalchain.app.commands.bridge", "register"),
    ("vitalchain.app.commands.deadletters", "register"),
    ("vitalchain.app.commands.anchor", "register"),
    ("vitalchain.app.demo", "register"),
    ("vitalchain.app.commands.audit", "register"),
    ("vitalchain.app.commands.api", "register"),
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
        getattr(importlib.import_module(module_name), function)(main)


_register_all()
