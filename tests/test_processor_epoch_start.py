"""A broker restart before a partition's first seal (D56), driven directly (the test plays the
consumer's part, as in test_processor_epochs).

Readings are stored as received, under their open window's id, before the window seals.  A
partition with nothing sealed in its epoch has no sealed record to check an incarnation by, so
the first record a worker takes in an epoch is noted in the ledger before anything of it is
stored.  Seen in CI before this rule: two workers, tansu restarted while partition 3 had only
received records; the new incarnation's records were sealed as ``p3-0`` of epoch 0, and the
audit called the readings stored under the old ``p3-0`` inserted (tampering).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.stream_support import SECOND, T0, reading
from vitalchain.audit.engine import run_audit
from vitalchain.config import Settings
from vitalchain.core.integrity import salt_key_id
from vitalchain.ingest.processor import StreamProcessor
from vitalchain.ingest.receipts import ReceiptWriter
from vitalchain.ingest.sink import Sealer
from vitalchain.ingest.windowing import DeadLetter, record_hash
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import EpochStart, Ledger

pytestmark = pytest.mark.e2e

KEY = bytes(range(32))
DEADLINE_S = 20.0


def value(device: str, seq: int) -> bytes:
    return json.dumps({**reading(device, seq, T0 + seq * SECOND // 2), "received_us": 1}).encode()


async def no_dead_letters(letter: DeadLetter) -> None:
    raise AssertionError(f"unexpected dead letter {letter.reason}")


class Consumer:
    """What the processor asks of Kafka: seeks (recorded), log start 0, a settable log end."""

    def __init__(self) -> None:
        self.seeks: list[int] = []
        self.highwater: int | None = None

    async def seek(self, partition: int, offset: int) -> None:
        self.seeks.append(offset)

    async def earliest(self, partition: int) -> int:
        return 0


def worker(settings: Settings, ledger: Ledger, influx: InfluxClient, receipts: ReceiptWriter,
           consumer: Consumer) -> StreamProcessor:
    return StreamProcessor(settings.raw_topic, ledger=ledger,
                           sealer=Sealer(ledger, influx, no_dead_letters, receipts),
                           window_seconds=2.0, idle_seal_seconds=3600, salt_key=KEY,
                           salt_key_id=salt_key_id(KEY), seek=consumer.seek,
                           earliest=consumer.earliest, highwater=lambda p: consumer.highwater,
                           retry_delay_s=0.05)


async def written(receipts: ReceiptWriter, n: int) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while receipts.stats.written < n:
            await asyncio.sleep(0.02)


async def test_a_restart_before_the_first_seal_starts_a_new_epoch_on_another_worker(
        isolated: Settings, tmp_path: Path) -> None:
    """Worker A takes three records of the old incarnation (stored as received in ``p0-0``)
    and loses the partition; the broker restarts; worker B, taking the partition, finds another
    record at the noted start: a new epoch, and A's readings are reported lost, not inserted."""
    topic = isolated.raw_topic
    ledger = Ledger(isolated.ledger_target)
    old = [(b"d0", value("d0", seq)) for seq in range(3)]
    new = [(b"d1", value("d1", seq)) for seq in range(8)]
    async with InfluxClient(isolated) as influx:
        receipts = ReceiptWriter(influx, flush_s=0.05)
        try:
            a_kafka, b_kafka = Consumer(), Consumer()
            a = worker(isolated, ledger, influx, receipts, a_kafka)
            for offset, (key, val) in enumerate(old):
                await a.handle(0, offset, key, val, lambda: None)
            start = ledger.epoch_start(topic, 0, 0)
            assert start is not None and start.offset == 0
            assert start.record_hash == record_hash(*old[0])
            await written(receipts, 3)  # as received, in the open window p0-0
            await a.revoke({0})

            b = worker(isolated, ledger, influx, receipts, b_kafka)
            b.claim({0})
            await b.idle_tick()  # a start is noted: B checks it before taking anything
            assert b_kafka.seeks == [0]
            await b.handle(0, 0, *new[0], lambda: None)  # not the record A started from
            [epoch] = ledger.epochs(topic)
            assert (epoch.epoch, epoch.prior_sealed_offset) == (1, None)
            assert "the epoch's noted start 0 is not the one first read there" in epoch.reason
            for offset, (key, val) in enumerate(new):
                await b.handle(0, offset, key, val, lambda: None)
            b.idle_seal_seconds = 0.0
            b_kafka.highwater = len(new)
            await b.idle_tick()
            await b.settle()
        finally:
            await receipts.close()
    windows = [w.window_id for w in ledger.windows(topic=topic)]
    assert windows and all(w.startswith("p0e1-") for w in windows), windows
    assert ledger.epoch_start(topic, 0, 1) == EpochStart(0, record_hash(*new[0]))
    report = await run_audit(isolated, T0, T0 + 60 * SECOND, settle_s=0.5)
    assert not report.tampered, report.to_text()
    lost = {(f.device_id, seq) for f in report.lost
            for seq in range(f.first_missing, f.last_missing + 1)}
    assert lost == {("d0", 0), ("d0", 1), ("d0", 2)}, report.to_text()


async def test_the_same_incarnation_goes_on_in_its_epoch_from_the_noted_start(
        isolated: Settings, tmp_path: Path) -> None:
    """A rebalance without a restart: B finds A's start and takes the partition from it, in
    epoch 0, under the window id A stored its readings under."""
    topic = isolated.raw_topic
    ledger = Ledger(isolated.ledger_target)
    records = [(b"d0", value("d0", seq)) for seq in range(8)]
    async with InfluxClient(isolated) as influx:
        receipts = ReceiptWriter(influx, flush_s=0.05)
        try:
            a = worker(isolated, ledger, influx, receipts, Consumer())
            for offset, (key, val) in enumerate(records[:3]):
                await a.handle(0, offset, key, val, lambda: None)
            await a.revoke({0})
            b_kafka = Consumer()
            b = worker(isolated, ledger, influx, receipts, b_kafka)
            b.claim({0})
            await b.idle_tick()
            acked: list[int] = []
            for offset, (key, val) in enumerate(records):
                await b.handle(0, offset, key, val, lambda offset=offset: acked.append(offset))
            await b.settle()
        finally:
            await receipts.close()
    assert ledger.epochs(topic) == [] and b.stats.epochs == 0
    assert [w.window_id for w in ledger.windows(topic=topic)] == ["p0-0"]
    assert acked == [0, 1, 2, 3]  # offset 4 cut p0-0; the record at the start is not skipped


async def test_a_log_end_dip_before_the_first_seal_is_checked_at_the_noted_start(
        isolated: Settings, tmp_path: Path) -> None:
    """One worker, nothing sealed yet, and the new log passes what it took before the check:
    the log-end rule cannot see it; the dip sends it to the noted start, which differs."""
    topic = isolated.raw_topic
    ledger = Ledger(isolated.ledger_target)
    kafka = Consumer()
    async with InfluxClient(isolated) as influx:
        receipts = ReceiptWriter(influx, flush_s=0.05)
        try:
            proc = worker(isolated, ledger, influx, receipts, kafka)
            for offset in range(3):  # old incarnation: 0..2 open in p0-0
                await proc.handle(0, offset, b"d0", value("d0", offset), lambda: None)
            kafka.highwater = 10
            await proc.idle_tick()
            kafka.highwater = 6  # restarted; its new log already passed offset 2
            await proc.idle_tick()
            assert kafka.seeks[-1] == 0
            await proc.handle(0, 0, b"d1", value("d1", 0), lambda: None)
            await proc.settle()
        finally:
            await receipts.close()
    [epoch] = ledger.epochs(topic)
    assert "noted start" in epoch.reason and epoch.prior_sealed_offset == 2
    # the old incarnation's open window was read intact: sealed (as an idle cut) in epoch 0
    [window] = ledger.windows(topic=topic)
    assert window.window_id == "p0-0" and window.idle_cut and window.header["size"] == 3
