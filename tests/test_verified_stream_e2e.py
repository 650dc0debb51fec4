"""Verified reads on what the real stream seals: no genuine reading is ever withheld.

The API tests seal windows with the stream's primitives; here a real ``vitalchain stream run``
worker seals produced records (with duplicates, seq conflicts and late readings), and every
point it wrote to InfluxDB must verify as ``sealed``: a false ``unknown`` or ``altered`` would hide
a real reading from clinicians. The window it is sealing while points are written (the moment
between its InfluxDB write and its ledger append) is the ``received`` case of the API tests.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.stream_support import Worker, influx_rows, make_input, produce
from tests.test_stream_e2e import run_to_completion, stream_settings
from vitalchain.config import Settings
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.verified import ReadVerifier

pytestmark = pytest.mark.e2e


def test_every_reading_the_stream_sealed_verifies_as_sealed(isolated: Settings,
                                                            tmp_path: Path) -> None:
    settings = stream_settings(isolated, tmp_path)
    inp = make_input(devices=4, seconds=6)
    ends = produce(settings, inp.records)
    worker = Worker(settings, "a", tmp_path)
    try:
        run_to_completion(settings, [worker], ends)
    finally:
        worker.kill(signal.SIGTERM)
    rows = influx_rows(settings, "SELECT * FROM readings")
    assert len(rows) == len(inp.unique)
    with Ledger(settings.ledger_path) as ledger:
        verdicts = ReadVerifier(ledger, settings.raw_topic).verify(rows)
        assert Counter(v.state.value for v in verdicts) == {"sealed": len(inp.unique)}
        assert {(v.device_id, v.seq) for v in verdicts} == set(inp.unique)
        late = {(v.device_id, v.seq) for v in verdicts if v.stored and v.stored.late}
        assert late == inp.late
        # A point nobody sent, next to the stream's: received only if it names its partition's
        # open window (the offset after the last sealed record), unknown if a sealed one.
        sealed_window = rows[0]["window_id"]
        partition = int(sealed_window.split("-")[0][1:])
        forged = [{**rows[0], "seq": rows[0]["seq"] + 1_000_000, "window_id": w}  # same seq % 1000
                  for w in (f"p{partition}-{ends[partition]}", sealed_window)]
        assert [v.state.value for v in ReadVerifier(ledger, settings.raw_topic).verify(forged)] \
            == ["received", "unknown"]
