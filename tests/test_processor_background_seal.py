"""D55: a window cut by a record seals in the background while the partition's next records
are taken, and nothing else about sealing changes.

Driven directly, as tests/test_processor_stalls.py does (the test plays the consumer), on the
real ledger and InfluxDB (``isolated``). The sealer is the real one, held at the start of
``seal`` by a gate the test opens (``GatedSealer``), or refusing once (``RefusingSealer``, the
ledger's fence as another worker would meet it): the pace and the refusal are the test's, the
sealing is the product's. One device, a reading every 0.5 s, 2 s windows: offsets 0..3 are
window p0-0, and offset 4 (at 2.0 s) cuts it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.test_processor_epochs import KEY, no_dead_letters, value
from tests.test_processor_stalls import Consumer
from vitalchain.config import Settings
from vitalchain.core.integrity import salt_key_id
from vitalchain.ingest.processor import StreamProcessor
from vitalchain.ingest.receipts import ReceiptWriter
from vitalchain.ingest.sink import LedgerAppender, Sealer, SealRefused, SealResult
from vitalchain.ingest.windowing import ClosedWindow
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger

pytestmark = pytest.mark.e2e

DEADLINE_S = 30.0


class GatedSealer(Sealer):
    """The real sealer, each ``seal`` waiting for ``gate`` first; ``started`` counts calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.started: list[str] = []

    async def seal(self, closed: ClosedWindow) -> SealResult:
        self.started.append(closed.header["window_id"] if closed.header else "range")
        await self.gate.wait()
        return await super().seal(closed)


class FailingSealer(GatedSealer):
    """Held at the gate, then fails as InfluxDB going away would."""

    async def seal(self, closed: ClosedWindow) -> SealResult:
        self.started.append(closed.header["window_id"] if closed.header else "range")
        await self.gate.wait()
        raise ConnectionError("InfluxDB went away (the test's)")


class RefusingSealer(Sealer):
    """Refuses the first window as the ledger's fence would; seals the rest."""

    refused = 0

    async def seal(self, closed: ClosedWindow) -> SealResult:
        if not self.refused:
            self.refused += 1
            raise SealRefused("another worker sealed this range (the test's fence)")
        return await super().seal(closed)


def processor(settings: Settings, sealer: Sealer, consumer: Consumer) -> StreamProcessor:
    return StreamProcessor(settings.raw_topic, ledger=sealer.ledger, sealer=sealer,
                           window_seconds=2.0, idle_seal_seconds=3600, salt_key=KEY,
                           salt_key_id=salt_key_id(KEY), seek=consumer.seek,
                           earliest=consumer.earliest, highwater=lambda p: consumer.highwater[p],
                           retry_delay_s=0.05)


@asynccontextmanager
async def gated(settings: Settings, tmp_path: Path, kind: type[GatedSealer] = GatedSealer
                ) -> AsyncIterator[tuple[StreamProcessor, GatedSealer, Ledger, list[int]]]:
    """A processor on a fresh ledger whose sealer waits at its gate; the offsets it acked."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    async with InfluxClient(settings) as influx:
        sealer = kind(ledger, influx, no_dead_letters)
        yield processor(settings, sealer, Consumer()), sealer, ledger, []


async def still_held(task: asyncio.Task[Any]) -> bool:
    """True if ``task`` has not finished after every chance to run (50 turns of the loop)."""
    for _ in range(50):
        await asyncio.sleep(0)
    return not task.done()


async def feed(proc: StreamProcessor, offsets: range, acked: list[int]) -> None:
    for offset in offsets:
        await proc.handle(0, offset, b"d0", value("d0", offset),
                          lambda offset=offset: acked.append(offset))


async def test_records_are_taken_and_written_while_their_predecessor_window_seals(
        isolated: Settings, tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    acked: list[int] = []
    async with InfluxClient(isolated) as influx:
        receipts = ReceiptWriter(influx, flush_s=0.05)
        appender = LedgerAppender(tmp_path / "ledger.sqlite")
        sealer = GatedSealer(ledger, influx, no_dead_letters, receipts, appender)
        proc = processor(isolated, sealer, Consumer())
        try:
            # offset 4 cuts p0-0: sealing in the background, held at the gate (a worker that
            # sealed in the record's own turn would hang here)
            await asyncio.wait_for(feed(proc, range(5), acked), DEADLINE_S)
            async with asyncio.timeout(DEADLINE_S):
                while not sealer.started:
                    await asyncio.sleep(0.01)
            assert sealer.started == ["p0-0"]
            await asyncio.wait_for(feed(proc, range(5, 8), acked), DEADLINE_S)  # not held
            assert proc.stats.readings_in == 8 and list(ledger.windows()) == [] and acked == []
            # The next window's readings reach InfluxDB as received while p0-0 still waits.
            async with asyncio.timeout(DEADLINE_S):
                while receipts.stats.written < 8:
                    await asyncio.sleep(0.02)
            assert list(ledger.windows()) == [] and acked == []

            sealer.gate.set()
            await asyncio.wait_for(proc.settle(), DEADLINE_S)
            assert [w.window_id for w in ledger.windows()] == ["p0-0"]
            assert acked == [0, 1, 2, 3]  # the sealed window's records, in offset order
            assert proc.stats.sealed_readings == 4
        finally:
            await receipts.close()
            appender.close()


async def test_a_window_cut_while_the_previous_one_seals_waits_for_it(
        isolated: Settings, tmp_path: Path) -> None:
    """At most one window seals in the background: the record that cuts the next one waits
    (so the backlog, and the memory it holds, stay one window), and the ledger gets them in
    order."""
    async with gated(isolated, tmp_path) as (proc, sealer, ledger, acked):
        # p0-0 sealing (held); offsets 4..7 in p0-4
        await asyncio.wait_for(feed(proc, range(8), acked), DEADLINE_S)
        cutting = asyncio.create_task(feed(proc, range(8, 9), acked))  # offset 8 cuts p0-4
        assert await still_held(cutting) and sealer.started == ["p0-0"]
        sealer.gate.set()
        await asyncio.wait_for(cutting, DEADLINE_S)
        await asyncio.wait_for(proc.settle(), DEADLINE_S)
    assert [w.window_id for w in ledger.windows()] == ["p0-0", "p0-4"]
    assert acked == list(range(8))
    assert sealer.started == ["p0-0", "p0-4"]


async def test_a_refused_background_seal_resyncs_the_partition_from_the_ledger(
        isolated: Settings, tmp_path: Path) -> None:
    """The ledger's fence refuses the window sealing in the background: nothing of it is acked,
    the partition is set up again from what the ledger holds (the consumer sought back to the
    first offset it has not sealed), and its records, read again, seal normally."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    acked: list[int] = []
    consumer = Consumer()
    async with InfluxClient(isolated) as influx:
        sealer = RefusingSealer(ledger, influx, no_dead_letters)
        proc = processor(isolated, sealer, consumer)
        await feed(proc, range(5), acked)  # offset 4 cuts p0-0: refused in the background
        async with asyncio.timeout(DEADLINE_S):
            while proc.stats.resyncs < 1:
                await asyncio.sleep(0.01)
        await proc.idle_tick()  # the lock holder resyncs the partition
        assert acked == [] and consumer.seeks == [0] and list(ledger.windows()) == []
        await feed(proc, range(9), acked)  # read again from offset 0
        await asyncio.wait_for(proc.settle(), DEADLINE_S)
    assert [w.window_id for w in ledger.windows()] == ["p0-0", "p0-4"]
    assert acked == list(range(8)) and proc.stats.resyncs == 1


async def test_a_revoked_partition_waits_for_its_window_in_flight(
        isolated: Settings, tmp_path: Path) -> None:
    """Revocation never races the partition's next owner: it returns only once the window
    sealing in the background is in the ledger (and its records acked)."""
    async with gated(isolated, tmp_path) as (proc, sealer, ledger, acked):
        await asyncio.wait_for(feed(proc, range(5), acked), DEADLINE_S)
        revoking = asyncio.create_task(proc.revoke({0}))
        assert await still_held(revoking) and list(ledger.windows()) == []
        sealer.gate.set()
        await asyncio.wait_for(revoking, DEADLINE_S)
    assert [w.window_id for w in ledger.windows()] == ["p0-0"] and acked == [0, 1, 2, 3]


async def test_a_background_seal_that_fails_while_stopping_is_raised_to_the_agent(
        isolated: Settings, tmp_path: Path) -> None:
    """Stopping, a seal that fails is not retried; the next record raises it, as a seal
    made in the record's own turn did (the worker's agent stops on it)."""
    async with gated(isolated, tmp_path, FailingSealer) as (proc, sealer, ledger, acked):
        await asyncio.wait_for(feed(proc, range(5), acked), DEADLINE_S)
        proc.stopping = True
        sealer.gate.set()
        with pytest.raises(ConnectionError, match="went away"):
            async with asyncio.timeout(DEADLINE_S):
                while True:  # the first record after the failure raises it
                    await feed(proc, range(5, 6), acked)
                    await asyncio.sleep(0.01)
    assert acked == [] and list(ledger.windows()) == [] and proc.stats.seal_retries == 0
