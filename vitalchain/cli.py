"""The ``vitalchain`` command. Each package registers its own subcommands here."""

from __future__ import annotations

import importlib

import click

from vitalchain.config import ConfigError, load_settings

# (module, function) pairs; each function takes the root group and adds its commands.
_REGISTRARS = (
    ("vitalchain.stack.cli", "register"),
    ("vitalchain.verify.cli", "register"),
    ("devices.cli", "register"),
    ("ingest.cli", "register"),
    ("anchor.cli", "register"),
    ("vitalchain.demo", "register"),
)


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """vitalchain: vital signs in, provable readings out."""
    try:
        ctx.obj = load_settings()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def _register_all() -> None:
    for module_name, function in _REGISTRARS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that package has no commands yet
            raise
        getattr(module, function)(main)


_register_all()
