"""``vitalchain devices`` end to end through click, against a Mosquitto of the test's own."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from click.testing import CliRunner

from vitalchain.app.cli import main
from vitalchain.app.stack.supervisor import Stack
from vitalchain.core.payload.schema import build_schema
from vitalchain.devices.registry import load_registry
from vitalchain.devices.seqstore import SeqCounter

pytestmark = pytest.mark.e2e


def env_for(stack: Stack) -> dict[str, str]:
    s = stack.settings
    return {"VITALCHAIN_STATE_DIR": str(s.state_dir), "VITALCHAIN_HOST": s.host,
            "VITALCHAIN_MQTT_PORT": str(s.mqtt_port)}


def test_provision_and_run(fresh_stack: Callable[..., Stack]) -> None:
    broker = fresh_stack(("mosquitto",))
    runner = CliRunner()
    env = env_for(broker)

    result = runner.invoke(main, ["devices", "provision", "3", "--prefix", "cli"], env=env)
    assert result.exit_code == 0, result.output
    assert "3 devices (3 new): cli-00001 .. cli-00003" in result.output
    assert sorted(load_registry(broker.settings)) == ["cli-00001", "cli-00002", "cli-00003"]

    result = runner.invoke(main, ["devices", "run", "--devices", "3", "--prefix", "cli",
                                  "--rate", "20", "--count", "8", "--batch", "4",
                                  "--interval", "0.2"], env=env)
    assert result.exit_code == 0, result.output
    assert re.search(r"^acknowledged\s+24 ", result.stdout, re.M), result.stdout
    assert re.search(r"^dropped\s+0$", result.stdout, re.M)
    assert re.search(r"published\s+24 readings in 6 messages", result.stdout)
    # Not a terminal: progress comes as whole lines on stderr, no carriage returns.
    progress = [line for line in result.stderr.splitlines() if "acknowledged" in line]
    assert progress and "\r" not in result.stderr
    assert "acknowledged 24" in progress[-1]
    assert SeqCounter.for_device(broker.settings, "cli-00002").peek == 8

    result = runner.invoke(main, ["devices", "run", "--devices", "1", "--prefix", "cli",
                                  "--rate", "50", "--duration", "0.2"], env=env)
    assert result.exit_code == 0, result.output
    assert SeqCounter.for_device(broker.settings, "cli-00001").peek > 8  # continued

    # one named patient deteriorates on a schedule; a patient not among the devices is refused
    declining = load_registry(broker.settings)["cli-00001"]
    result = runner.invoke(main, ["devices", "run", "--devices", "1", "--prefix", "cli", "--rate", "50",
                                  "--duration", "0.2", "--deteriorate", declining,
                                  "--deteriorate-over", "60"], env=env)
    assert result.exit_code == 0, result.output
    assert f"patient {declining} deteriorates: NEWS2 amber from about 24s, red from about 48s" \
        in result.stderr
    result = runner.invoke(main, ["devices", "run", "--devices", "1", "--prefix", "cli", "--count", "1",
                                  "--deteriorate", "patient-nobody"], env=env)
    assert result.exit_code == 2 and "not a patient of these devices" in result.output


def test_cli_refuses_bad_input(tmp_path) -> None:
    runner = CliRunner()
    env = {"VITALCHAIN_STATE_DIR": str(tmp_path)}
    result = runner.invoke(main, ["devices", "run", "--count", "1", "--duration", "1"], env=env)
    assert result.exit_code == 2 and "not both" in result.output
    result = runner.invoke(main, ["devices", "run", "--batch", "101"], env=env)
    assert result.exit_code == 2
    result = runner.invoke(main, ["devices", "provision", "2", "--prefix", "bad/prefix"], env=env)
    assert result.exit_code == 1 and "invalid device ids" in result.output


def test_schema_command_prints_the_schema() -> None:
    result = CliRunner().invoke(main, ["devices", "schema"])
    assert result.exit_code == 0
    assert json.loads(result.output) == build_schema()


def test_progress_updates_in_place_on_a_terminal() -> None:
    import io

    from vitalchain.app.commands.devices import _progress_printer
    from vitalchain.devices.fleet import FleetStats

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    show, finish = _progress_printer(stream)
    show(FleetStats(devices=2, connected=2, published=10, acked=10))
    show(FleetStats(devices=2, connected=1, published=7, acked=5, buffered=2))
    finish()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.count("\n") == 1 and text.endswith("\n")
    assert "acknowledged 5  buffered 2" in text.split("\r")[-1]
