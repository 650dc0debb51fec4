"""bench/bench_merkle.py runs (small) and cross-checks against pymerkle without failing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_merkle.py"


def test_bench_smoke():
    pytest.importorskip("pymerkle")
    out = subprocess.run(
        [sys.executable, str(BENCH), "--leaves", "2000", "--proofs", "300", "--consistency", "50"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    assert "inclusion proofs" in out and "pymerkle / ours" in out
    assert "roots agree" in out
