"""``vitalchain audit``: exit codes 0/1/2, the JSON report, argument validation, services down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.audit_support import T0, World, build_world, influx_query
from vitalchain.app.cli import main
from vitalchain.app.commands.audit import audit_command
from vitalchain.app.stack.ports import free_ports
from vitalchain.config import Settings
from vitalchain.core.timeutil import TimeArgError, parse_time_us
from vitalchain.storage.influx import quote_string
from vitalchain.storage.readings import point_time_ns


def run(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(audit_command, list(args), obj=settings)


def test_time_arguments() -> None:
    assert parse_time_us("1750000000000000") == 1_750_000_000_000_000
    assert parse_time_us("2025-06-15T15:06:40Z") == 1_750_000_000_000_000
    assert parse_time_us("2025-06-15T17:06:40.000001+02:00") == 1_750_000_000_000_001
    assert parse_time_us("2025-06-15T15:06:40") == 1_750_000_000_000_000  # naive = UTC
    for bad in ("", "yesterday", "-5", "2025-13-01", "99999999999999999999", "1e15"):
        with pytest.raises(TimeArgError):
            parse_time_us(bad)


def test_bad_arguments_exit_2(isolated: Settings) -> None:
    result = run(isolated, "--from", "2026-01-02", "--to", "2026-01-01")
    assert result.exit_code == 2 and "--to" in result.output and "before --from" in result.output
    result = run(isolated, "--from", "soon", "--to", "2026-01-01")
    assert result.exit_code == 2 and "ISO 8601" in result.output
    result = run(isolated, "--from", "0", "--to", "1", "--rpc", "ftp://x")
    assert result.exit_code == 2 and "--rpc" in result.output


def test_registered_on_the_main_command() -> None:
    result = CliRunner().invoke(main, ["audit", "--help"])
    assert result.exit_code == 0 and "--from" in result.output and "--json" in result.output


def test_missing_ledger_exits_2(isolated: Settings) -> None:
    result = run(isolated, "--from", "0", "--to", "1")
    assert result.exit_code == 2 and "no ledger" in result.output


@pytest.mark.e2e
def test_clean_then_tampered_via_cli(isolated: Settings, tmp_path: Path) -> None:
    world: World = build_world(isolated)
    report_file = tmp_path / "audit.json"
    args = ["--from", str(T0), "--to", str(world.end_us), "--json", str(report_file)]
    clean = run(world.settings, *args)
    assert clean.exit_code == 0, clean.output
    assert "windows checked 4/4" in clean.output  # CliRunner mixes stderr into output
    data = json.loads(report_file.read_text())
    assert data["ok"] is True and data["counts"]["windows_checked"] == 4
    assert data["counts"]["chain_checked"] is True

    r = world.reading("dev-a", 2)
    influx_query(world.settings, f"DELETE FROM readings WHERE device_id = {quote_string('dev-a')} "
                                 f"AND time = {point_time_ns(r['ts_us'], r['seq'])}")
    tampered = run(world.settings, *args)
    assert tampered.exit_code == 1, tampered.output
    assert "READING DELETED: dev-a#2" in tampered.output
    data = json.loads(report_file.read_text())
    assert data["ok"] is False
    assert [(f["kind"], f["reading_id"]) for f in data["readings"]] == [("deleted", "dev-a#2")]
    assert data["windows"] == data["checkpoints"] == data["gaps"] == []

    (closed_port,) = free_ports(1)
    down = run(world.settings, *args, "--rpc", f"http://127.0.0.1:{closed_port}")
    assert down.exit_code == 2 and "could not run" in down.output and "unreachable" in down.output

    no_influx = run(world.settings.with_overrides(influx_port=closed_port), *args)
    assert no_influx.exit_code == 2 and "InfluxDB" in no_influx.output


@pytest.mark.e2e
def test_empty_range_and_gaps_have_their_own_exit_statuses(isolated: Settings, tmp_path: Path) -> None:
    """Nothing sealed in the range: exit 3 and says so, never OK. A seq gap (allowed by
    docs/DEVICES.md) is printed as information and the audit still exits 0."""
    world: World = build_world(isolated, gap=("dev-b", 5))
    report_file = tmp_path / "audit.json"
    empty = run(world.settings, "--from", str(T0 - 60_000_000), "--to", str(T0 - 1),
                "--json", str(report_file))
    assert empty.exit_code == 3, empty.output
    assert "NOTHING SEALED in this range" in empty.output and "OK" not in empty.output
    data = json.loads(report_file.read_text())
    assert data["verdict"] == "nothing_sealed" and data["ok"] is False and data["exit_code"] == 3

    gapped = run(world.settings, "--from", str(T0), "--to", str(world.end_us), "--json",
                 str(report_file))
    assert gapped.exit_code == 0, gapped.output
    assert "info: sequence gap dev-b#5" in gapped.output and "OK: 4 windows" in gapped.output
    data = json.loads(report_file.read_text())
    assert data["verdict"] == "clean" and [g["device_id"] for g in data["gaps"]] == ["dev-b"]
