"""The receipt writer's pace (ingest.receipts): its flush interval counts from a flush's start,
so a slow POST does not add to every reading's wait for the screen, and a POST longer than the
interval is followed at once by what queued meanwhile.  On a real InfluxDB, whose writes are
made slow on purpose by the client (the pace is the writer's, not InfluxDB's); every reading
queued is written once, in the end."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from vitalchain.config import Settings
from vitalchain.core.integrity.leaves import canonical_reading, reading_leaf_hash
from vitalchain.ingest.receipts import ReceiptWriter
from vitalchain.ingest.windowing import WindowReading
from vitalchain.storage.influx import InfluxClient

SALT_KEY = b"s" * 32
T0 = 1_764_000_000_000_000


class SlowInflux(InfluxClient):
    """A real InfluxDB client whose every write first waits ``post_s``: a loaded server."""

    def __init__(self, settings: Settings, post_s: float) -> None:
        super().__init__(settings)
        self.post_s = post_s
        self.writes: list[tuple[float, float, int]] = []  # (began, ended, lines)

    async def write(self, lines: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.monotonic()
        await asyncio.sleep(self.post_s)
        result = await super().write(lines, *args, **kwargs)
        self.writes.append((began, time.monotonic(), len(lines)))
        return result


def _reading(seq: int) -> WindowReading:
    sent = {"device_id": "dev-pace", "patient_id": "pat-pace", "seq": seq,
            "ts_us": T0 + seq * 10_000,
            "vitals": {"hr": 72, "spo2": 98, "rr": 14, "temp_c": 36.6, "sys": 120, "dia": 80}}
    canonical = canonical_reading(sent, SALT_KEY)
    return WindowReading(seq, canonical, reading_leaf_hash(canonical), False, sent["ts_us"] + 5)


def _paced(settings: Settings, flush_s: float, post_s: float,
           run_s: float) -> tuple[list[tuple[float, float, int]], int]:
    """Queue a reading every 10 ms for ``run_s``; the writes made, and the points stored."""

    async def go() -> tuple[list[tuple[float, float, int]], int]:
        async with SlowInflux(settings, post_s) as influx:
            writer = ReceiptWriter(influx, flush_s=flush_s)
            seq, end = 0, time.monotonic() + run_s
            try:
                while time.monotonic() < end:
                    seq += 1
                    writer.add_many([_reading(seq)], "p0-0")
                    await asyncio.sleep(0.01)
                deadline = time.monotonic() + 30
                while writer.stats.written < seq and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            finally:
                await writer.close()
            assert writer.queued == 0 and writer.stats.written == seq, (writer.queued, seq)
            rows = await influx.query("SELECT count(seq) FROM readings WHERE device_id = 'dev-pace'")
            return influx.writes, int(rows[0]["count"]) if rows else 0

    return asyncio.run(go())


def test_a_post_longer_than_the_interval_is_followed_at_once(isolated: Settings) -> None:
    """Flush every 0.3 s, each POST 0.5 s: counted from the end, the writer would idle 0.3 s
    between POSTs (0.8 s a round); counted from the start, the next begins as one ends."""
    writes, stored = _paced(isolated, flush_s=0.3, post_s=0.5, run_s=3.0)
    gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(writes)]
    assert len(gaps) >= 3, writes
    assert max(gaps[:3]) < 0.15, gaps  # the first rounds, while readings still arrive
    assert stored == sum(n for _, _, n in writes)


def test_a_fast_post_keeps_the_interval_from_start_to_start(isolated: Settings) -> None:
    """Flush every 0.4 s, each POST 0.2 s: rounds start 0.4 s apart, not 0.6 s."""
    writes, stored = _paced(isolated, flush_s=0.4, post_s=0.2, run_s=3.0)
    starts = [began for began, _, _ in writes]
    periods = [b - a for a, b in itertools.pairwise(starts)][:4]
    assert len(periods) >= 3, writes
    assert all(0.3 < p < 0.5 for p in periods), periods
    assert stored == sum(n for _, _, n in writes)


def test_the_progress_lines_ages_are_per_line_and_say_when_nothing_passed() -> None:
    """p50/p99 in ms of the ages collected since the last line; a stage no reading passed says
    ``-`` (not ``nan``), and reading the line starts the next period."""
    from vitalchain.ingest.receipts import ReadingAges

    ages = ReadingAges()
    assert ages.line() == "age_taken_ms=- age_written_ms=-"
    ages.taken_us = [1_000 * n for n in range(1, 101)]  # 1..100 ms
    ages.written_us = [250_000]
    assert ages.line() == "age_taken_ms=51/100 age_written_ms=250/250"
    assert ages.line() == "age_taken_ms=- age_written_ms=-"
