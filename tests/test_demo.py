"""`make demo`'s command, end to end, against a stack started before with `vitalchain stack up`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.audit_support import influx_query
from tests.common_support import demo_env, run_vitalchain
from vitalchain.api.news2 import news2
from vitalchain.config import load_settings
from vitalchain.core.verify import verify_bundle
from vitalchain.storage.chainrpc import JsonRpc


@pytest.mark.e2e
def test_demo_proves_a_reading_against_a_running_stack(tmp_path: Path) -> None:
    env = demo_env(tmp_path / "state")
    api, eth = env["VITALCHAIN_API_PORT"], env["VITALCHAIN_ETH_PORT"]

    def vitalchain(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run_vitalchain(env, *args, timeout=timeout)

    try:
        assert vitalchain("stack", "up").returncode == 0
        demo = vitalchain("demo", "--devices", "6", "--seconds", "10")
        output = demo.stdout + demo.stderr
        assert demo.returncode == 0, output
        assert "verdict: VALID" in output
        # Issue #13: the proof starts at the sensor (signatures required, the default).
        assert re.search(r"ok\s+device-signature\s", output), output
        assert re.search(r"ok\s+device-key\s", output), output
        assert f"http://127.0.0.1:{api}/" in output
        # It says the dashboard ends with it, and how to keep it; the verify command it prints
        # can be pasted: bare `vitalchain` only when that is on PATH, else the script's path.
        assert "demo --serve" in output and "stop with the demo" in output
        shown = re.search(r"verify:\s+(\S+) verify --rpc", output).group(1)
        assert Path(shown).is_file() or (shown == "vitalchain" and shutil.which("vitalchain")), shown
        bundle_path = Path(re.search(r"bundle:\s+(\S+)", output).group(1))
        bundle = json.loads(bundle_path.read_text())
        assert bundle["anchor"] is not None
        assert bundle["format"] == "vitalchain-proof/2"
        report = verify_bundle(bundle, JsonRpc(f"http://127.0.0.1:{eth}"))
        assert report.status == "valid", report.to_dict()
        # the named patient deteriorated: their last stored reading scores NEWS2 red
        declining = re.search(r"patient (\S+) deteriorates: NEWS2 amber", output)
        assert declining, output
        newest = influx_query(load_settings(env), "SELECT * FROM readings WHERE patient_id = "
                              f"'{declining[1]}' ORDER BY time DESC LIMIT 1")
        assert newest and news2(newest[0]).risk == "high", newest
        # Two bridges carried the fleet, each over its own shards (docs/DEVICES.md): the six
        # demo wearables fall in shards 0, 0, 0, 2, 3, 1, so each bridge forwarded some.
        logs = tmp_path / "state" / "logs"
        for name in ("bridge-0", "bridge-1"):
            forwarded = re.findall(r"forwarded=(\d+)", (logs / f"{name}.log").read_text())
            assert forwarded and int(forwarded[-1]) > 0, (name, forwarded)
        # The demo leaves the stack as it found it: running, and stoppable.
        assert vitalchain("stack", "status").returncode == 0
    finally:
        down = vitalchain("stack", "down")
    assert down.returncode == 0
