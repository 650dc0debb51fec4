"""`vitalchain demo` unchanged on a PostgreSQL ledger: `stack up` starts a private server for a
127.0.0.1 URL, the demo proves a reading, no SQLite file is created, `stack down` stops it all."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.common_support import demo_env, run_vitalchain
from vitalchain.app.stack.ports import free_port
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import load_settings
from vitalchain.core.verify import verify_bundle
from vitalchain.storage.chainrpc import JsonRpc
from vitalchain.storage.ledger import Ledger


@pytest.mark.e2e
def test_demo_runs_unchanged_on_a_private_postgresql(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = demo_env(state)
    env["VITALCHAIN_LEDGER_URL"] = f"postgresql://vitalchain@127.0.0.1:{free_port()}/ledger"
    eth = env["VITALCHAIN_ETH_PORT"]

    def vitalchain(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run_vitalchain(env, *args, timeout=timeout)

    settings = load_settings(env)
    try:
        up = vitalchain("stack", "up")
        assert up.returncode == 0, up.stderr
        assert "postgres   healthy (query ok" in up.stderr
        assert (state / "postgres" / "data" / "PG_VERSION").is_file()
        status = vitalchain("stack", "status")
        assert status.returncode == 0 and re.search(r"^postgres\s+healthy", status.stdout, re.M), status.stdout
        demo = vitalchain("demo", "--devices", "4", "--seconds", "8")
        output = demo.stdout + demo.stderr
        assert demo.returncode == 0, output
        assert "verdict: VALID" in output
        bundle = json.loads(Path(re.search(r"bundle:\s+(\S+)", output).group(1)).read_text())
        assert bundle["anchor"] is not None
        assert verify_bundle(bundle, JsonRpc(f"http://127.0.0.1:{eth}")).status == "valid"
        with Ledger(settings.ledger_target) as ledger:
            assert ledger.backend == "postgresql" and ledger.log_size() > 0
            assert ledger.window_by_id(bundle["window"]["window_id"]) is not None
        assert sorted(p.name for p in state.rglob("*.sqlite*")) == []
    finally:
        down = vitalchain("stack", "down")
    assert down.returncode == 0, down.stderr
    assert Stack(settings).pid("postgres") is None and not (state / "run" / "postgres.json").exists()
