"""The stream processor's running check, driven directly (the test plays the consumer's part):
when the partition's log end falls below what the worker has taken, the open window of the old
incarnation is sealed, a new epoch starts and the partition is read again from its start.

The ledger and InfluxDB are the real ones (``isolated``); Kafka is not involved because the
processor never talks to it: it is handed records, a high watermark and a seek function.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stream_support import SECOND, T0, influx_rows, reading
from vitalchain.config import Settings
from vitalchain.core.integrity import salt_key_id
from vitalchain.ingest import processor as processor_module
from vitalchain.ingest.processor import StreamProcessor
from vitalchain.ingest.sink import Sealer
from vitalchain.ingest.windowing import DeadLetter
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger

KEY = bytes(range(32))


def value(device: str, seq: int) -> bytes:
    return json.dumps({**reading(device, seq, T0 + seq * SECOND // 2), "received_us": 1}).encode()


async def no_dead_letters(letter: DeadLetter) -> None:
    raise AssertionError(f"unexpected dead letter {letter.reason}")


@pytest.mark.e2e
async def test_log_end_below_what_is_taken_seals_the_open_window_and_starts_over(
        isolated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processor_module, "BACKWARDS_CONFIRM_S", 0.0)
    topic = isolated.raw_topic
    ledger = Ledger(tmp_path / "ledger.sqlite")
    highwater: dict[int, int | None] = {0: None}
    seeks: list[int] = []
    acked: list[int] = []

    async def seek(partition: int, offset: int) -> None:
        seeks.append(offset)

    async def earliest(partition: int) -> int:
        return 0

    async with InfluxClient(isolated) as influx:
        proc = StreamProcessor(topic, ledger=ledger, sealer=Sealer(ledger, influx, no_dead_letters),
                               window_seconds=2.0, idle_seal_seconds=3600, salt_key=KEY,
                               salt_key_id=salt_key_id(KEY), seek=seek, earliest=earliest,
                               highwater=lambda p: highwater[p], retry_delay_s=0.05)
        # Old incarnation: 12 readings at 0.5 s; windows 0..3 and 4..7 sealed, 8..11 open.
        for offset in range(12):
            await proc.handle(0, offset, b"d0", value("d0", offset),
                              lambda offset=offset: acked.append(offset))
        await proc.settle()  # the window cut at offset 8 seals in the background
        highwater[0] = 12
        await proc.idle_tick()  # all taken, nothing idle: no cut, no epoch
        assert [w.window_id for w in ledger.windows()] == ["p0-0", "p0-4"]

        highwater[0] = 3  # the broker restarted: its new log ends below offset 11, taken
        await proc.idle_tick()  # a log end lower than before: check the sealed record again
        assert seeks[-1] == 7 and ledger.epochs(topic) == []
        await proc.idle_tick()  # and the log ends below it: offsets went backwards
        windows = list(ledger.windows())
        assert [w.window_id for w in windows] == ["p0-0", "p0-4", "p0-8"]
        assert windows[2].idle_cut and "epoch" not in windows[2].header
        assert acked == list(range(12))
        position = ledger.position(topic, 0)
        assert (position.epoch, position.sealed_offset) == (1, None)
        [epoch] = ledger.epochs(topic)
        assert (epoch.prior_sealed_offset, epoch.prior_end_offset) == (11, 12)
        assert "offsets went backwards" in epoch.reason
        assert seeks[-1] == 0 and proc.stats.epochs == 1 and proc.stats.salvaged == 4

        # New incarnation from offset 0: three new readings and a device's replay of seq 3.
        for offset, seq in enumerate((12, 3, 13, 14)):
            await proc.handle(0, offset, b"d0", value("d0", seq), lambda: None)
        proc.idle_seal_seconds = 0.0
        highwater[0] = 4
        await proc.idle_tick()
    windows = list(ledger.windows())
    assert [w.window_id for w in windows][-1] == "p0e1-0"
    assert windows[-1].header["epoch"] == 1 and windows[-1].header["size"] == 3
    assert ledger.position(topic, 0).sealed_offset == 3
    assert proc.stats.duplicates == 1
    rows = influx_rows(isolated, "SELECT seq, window_id FROM readings")
    assert sorted(int(r["seq"]) for r in rows) == list(range(15))
    assert {r["window_id"] for r in rows if r["seq"] >= 12} == {"p0e1-0"}
