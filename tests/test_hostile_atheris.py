"""Coverage-guided fuzzing of ``vitalchain.core.payload.validation`` with atheris (libFuzzer), bounded.

atheris takes over its process (libFuzzer's main loop, ``sys.exit`` at the end), so the fuzz
target runs in a child process for a fixed number of runs, seeded with a valid reading and a
valid batch so mutations start near the interesting boundary. The target's invariants: validation
never raises, every message ends as forwarded readings and/or rejections with a known reason, a
forwarded reading passes the checks again and serializes to what the bridge writes to Kafka.
Skipped where atheris is not installed (``pip install atheris``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("atheris")

RUNS = int(os.environ.get("VITALCHAIN_ATHERIS_RUNS", "100000"))
REPO = Path(__file__).resolve().parent.parent

TARGET = textwrap.dedent('''
    import sys
    import atheris

    with atheris.instrument_imports(include=["ingest", "devices"]):
        from vitalchain.ingest.bridge import _raw_value
        from vitalchain.core.payload.validation import REASONS, check_reading, validate

    NOW = 1_767_225_600_000_000
    TOPICS = ("vitals/fuzz-1", "vitals/other", "vitals/", "nope/fuzz-1", "vitals/fuzz-1/x")

    def target(data: bytes) -> None:
        topic = TOPICS[data[0] % len(TOPICS)] if data else TOPICS[0]
        payload = data[1:]
        outcome = validate(topic, payload, NOW, max_payload_bytes=4096, max_future_seconds=300)
        assert outcome.readings or outcome.rejections, (topic, payload)
        assert len(outcome.readings) == len(outcome.reading_indexes)
        for rejection in outcome.rejections:
            assert rejection.reason in REASONS and rejection.detail
        for reading in outcome.readings:
            assert check_reading(reading) is reading
            assert reading["device_id"] == topic.removeprefix("vitals/")
            assert _raw_value(reading, NOW)

    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
''')


def _seeds(corpus: Path) -> None:
    reading = {"device_id": "fuzz-1", "patient_id": "pat-1", "seq": 3,
               "ts_us": 1_767_225_500_000_000,
               "vitals": {"hr": 72, "spo2": 98, "rr": 14, "temp_c": 36.6, "sys": 120, "dia": 80}}
    corpus.mkdir()
    (corpus / "single").write_bytes(b"\x00" + json.dumps(reading).encode())
    batch = {"readings": [reading, {**reading, "seq": 4}]}
    (corpus / "batch").write_bytes(b"\x00" + json.dumps(batch).encode())


def test_atheris_fuzz_of_validation_finds_no_crash(tmp_path: Path) -> None:
    script = tmp_path / "fuzz_validation.py"
    script.write_text(TARGET)
    corpus = tmp_path / "corpus"
    _seeds(corpus)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script), f"-runs={RUNS}", "-max_len=4096", "-seed=1",
         f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=300)
    elapsed = time.monotonic() - started
    log = result.stderr[-3000:]
    assert result.returncode == 0, f"atheris found a failing input:\n{log}"
    assert f"Done {RUNS} runs" in result.stderr, log
    assert not list(tmp_path.glob("crash-*"))
    print(f"\natheris: {RUNS} runs of vitalchain.core.payload.validation in {elapsed:.1f}s, no crash",
          file=sys.stderr)
