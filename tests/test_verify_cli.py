"""The ``verify`` command: files and stdin, text and JSON output, exit status = worst."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner

from vitalchain.app.commands.verify import register, verify_command
from vitalchain.core.integrity.example import example_bundle


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def test_valid_pending_invalid_and_unreadable(tmp_path):
    good = example_bundle()
    pending = dict(good, anchor=None)
    bad = json.loads(json.dumps(good))
    bad["reading"]["vitals"]["hr"] += 1
    runner = CliRunner()

    r = runner.invoke(verify_command, [write(tmp_path, "good.json", good)])
    assert r.exit_code == 0 and "VALID (offline" in r.output
    assert "verdict: hashes valid, anchor not checked" in r.output and "anchored" not in r.output

    r = runner.invoke(verify_command, [write(tmp_path, "p.json", pending)])
    assert r.exit_code == 0 and "PENDING" in r.output

    r = runner.invoke(verify_command, [write(tmp_path, "g.json", good),
                                       write(tmp_path, "bad.json", bad)])
    assert r.exit_code == 1 and "INVALID (failed step: reading-inclusion)" in r.output

    r = runner.invoke(verify_command, [write(tmp_path, "b.json", bad),
                                       write(tmp_path, "junk.json", "{not json")])
    assert r.exit_code == 2 and "not valid JSON" in r.output

    r = runner.invoke(verify_command, [str(tmp_path / "missing.json")])
    assert r.exit_code == 2 and "cannot read" in r.output


def test_strict_json(tmp_path):
    runner = CliRunner()
    text = json.dumps(example_bundle())
    dup = text.replace('"format": "vitalchain-proof/1"',
                       '"format": "vitalchain-proof/1", "format": "vitalchain-proof/1"')
    r = runner.invoke(verify_command, [write(tmp_path, "d.json", dup)])
    assert r.exit_code == 2 and "duplicate key" in r.output
    nan = text.replace('"late": 1', '"late": NaN')
    r = runner.invoke(verify_command, [write(tmp_path, "n.json", nan)])
    assert r.exit_code == 2 and "NaN" in r.output


def test_stdin_and_json_output():
    runner = CliRunner()
    r = runner.invoke(verify_command, ["--json"], input=json.dumps(example_bundle()))
    assert r.exit_code == 0
    (item,) = json.loads(r.output)
    assert item["source"] == "<stdin>" and item["status"] == "valid"
    assert item["failed_step"] is None and item["anchor_checked"] is False
    assert {s["step"]: s["status"] for s in item["steps"]}["checkpoint"] == "ok"
    r = runner.invoke(verify_command, ["-", "--json"], input='{"format": "other"}')
    assert r.exit_code == 2 and json.loads(r.output)[0]["status"] == "error"


def test_register_adds_command():
    @click.group()
    def cli():
        pass

    register(cli)
    r = CliRunner().invoke(cli, ["verify", "--json"], input=json.dumps(example_bundle()))
    assert r.exit_code == 0, r.output


def test_verifier_needs_no_services_and_no_web3_offline():
    import subprocess
    import sys

    code = (
        "import sys, json; import vitalchain.core.verify as v;"
        "from vitalchain.core.integrity.example import example_bundle;"
        "assert v.verify_bundle(example_bundle()).ok;"
        "bad = [m for m in sys.modules if m == 'web3' or m.startswith('vitalchain.')"
        " and m not in ('vitalchain.core', 'vitalchain.errors')"
        " and not m.startswith(('vitalchain.core.integrity', 'vitalchain.core.verify'))];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_python_dash_m(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, "b.json", example_bundle())
    r = subprocess.run([sys.executable, "-m", "vitalchain", "verify", path, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["status"] == "valid"
