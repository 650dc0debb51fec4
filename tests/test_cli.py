"""The CLI's index stays true, and ``vitalchain --help`` starts without importing the services."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from vitalchain.app.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_indexed_command_exists_and_its_summary_is_its_help(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert command is not None and command.name == name
    assert (command.help or "").strip().splitlines()[0] == COMMANDS[name][1]


def test_help_lists_every_command_and_imports_no_service() -> None:
    code = ("import sys; from click.testing import CliRunner; from vitalchain.app.cli import main;"
            "r = CliRunner().invoke(main, ['--help']); print(r.output);"
            "ok = ('vitalchain.app.cli', 'vitalchain.app.production', 'vitalchain.config', 'vitalchain.errors',"
            " 'vitalchain.core');"
            "print('LOADED', sorted(m for m in sys.modules if (m.startswith('vitalchain.')"
            " and m != 'vitalchain.app' and not m.startswith(ok)) or m in ('web3', 'faust', 'fastapi')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    for name in COMMANDS:
        assert f"  {name} " in out
    assert "LOADED []" in out, out.splitlines()[-1]


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2 and "No such command" in result.output
