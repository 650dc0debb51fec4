"""The issue's sequence as a new user runs it: demo, `stack down`, `stack up`, demo again.

tansu keeps topics in memory, so the second demo's Kafka hands out offsets the ledger already
sealed in the first; the stream must start a new epoch and prove the second run's reading.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.common_support import demo_env, run_vitalchain
from vitalchain.storage.ledger import Ledger


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_demo_stack_down_stack_up_demo(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = demo_env(state)

    def vitalchain(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run_vitalchain(env, *args, timeout=timeout)

    def demo() -> str:
        run = vitalchain("demo", "--devices", "6", "--seconds", "8")
        output = run.stdout + run.stderr
        assert run.returncode == 0, output
        assert "verdict: VALID" in output, output
        return output

    try:
        assert vitalchain("stack", "up").returncode == 0
        demo()
        assert vitalchain("stack", "down").returncode == 0
        assert vitalchain("stack", "up").returncode == 0
        demo()
    finally:
        vitalchain("stack", "down")
    ledger_path = next(state.rglob("ledger*.sqlite"))
    with Ledger(ledger_path) as ledger:
        epochs = ledger.epochs()
        windows = list(ledger.windows())
    assert epochs and all(e.epoch == 1 for e in epochs)
    assert any(w.header.get("epoch") == 1 for w in windows)
