"""The stream processor's stall rule, driven directly (the test plays the consumer's part): a
partition whose log end is past the offset the processor expects, but from which no record
comes, has a consumer sitting elsewhere (after a broker restart Faust seeks to a committed offset
of the old incarnation, past the new log's end); the processor seeks it back instead of waiting
until the new log grows that far (issue #16: the stream resumed 40 to 90 s late after a tansu
restart, and what it had not sealed by the next restart was lost).

The ledger and InfluxDB are the real ones (``isolated``); Kafka is not involved because the
processor never talks to it: it is handed records, a high watermark and a seek function.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.common_support import wait_until_async
from tests.test_processor_epochs import KEY, no_dead_letters, value
from vitalchain.config import Settings
from vitalchain.core.integrity import salt_key_id
from vitalchain.ingest import processor as processor_module
from vitalchain.ingest.processor import StreamProcessor
from vitalchain.ingest.sink import Sealer
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger

pytestmark = pytest.mark.e2e


class Consumer:
    """What the processor may ask of the consumer: seeks (recorded), earliest, high watermark."""

    def __init__(self) -> None:
        self.highwater: dict[int, int | None] = {0: None}
        self.seeks: list[int] = []
        self.handed_at: dict[int, float] = {}  # when a record was last handed to the buffer
        self.positions: dict[int, int] = {}  # the consumer's fetch position

    async def seek(self, partition: int, offset: int) -> None:
        self.seeks.append(offset)

    async def earliest(self, partition: int) -> int:
        return 0


def make_processor(settings: Settings, ledger: Ledger, influx: InfluxClient,
                   consumer: Consumer) -> StreamProcessor:
    return StreamProcessor(settings.raw_topic, ledger=ledger,
                           sealer=Sealer(ledger, influx, no_dead_letters), window_seconds=2.0,
                           idle_seal_seconds=3600, salt_key=KEY, salt_key_id=salt_key_id(KEY),
                           seek=consumer.seek, earliest=consumer.earliest,
                           highwater=lambda p: consumer.highwater[p], retry_delay_s=0.05,
                           fetched=consumer.handed_at.get, position=consumer.positions.get)


@asynccontextmanager
async def running(settings: Settings, tmp_path: Path, consumer: Consumer, records: int = 0
                  ) -> AsyncIterator[tuple[StreamProcessor, Ledger]]:
    """A processor on a fresh ledger that has taken offsets ``0..records-1`` of partition 0
    (one device's readings, 0.5 s apart: with 2 s windows, 6 records seal windows 0..3)."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    async with InfluxClient(settings) as influx:
        proc = make_processor(settings, ledger, influx, consumer)
        for offset in range(records):
            await proc.handle(0, offset, b"d0", value("d0", offset), lambda: None)
        await proc.settle()  # a cut window seals in the background
        yield proc, ledger


async def test_a_partition_with_records_in_kafka_but_none_arriving_is_sought_back(
        isolated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = Consumer()
    async with running(isolated, tmp_path, consumer, records=6) as (proc, ledger):  # windows 0..3 sealed, 4..5 open
        consumer.highwater[0] = 6
        await proc.idle_tick()
        assert consumer.seeks == [] and proc.stats.stalls == 0  # caught up: nothing to do

        consumer.highwater[0] = 40  # records 6..39 are in Kafka, and none comes
        await proc.idle_tick()
        assert consumer.seeks == [], "sought back before the stall time passed"
        monkeypatch.setattr(processor_module, "STALL_S", 0.0)
        await proc.idle_tick()
        assert consumer.seeks == [6] and proc.stats.stalls == 1
        await proc.idle_tick()  # a seek is pending: the RESEEK_S rule repeats it, not this one
        assert proc.stats.stalls == 1

        await proc.handle(0, 6, b"d0", value("d0", 6), lambda: None)  # the consumer came back
        assert proc.stats.readings_in == 7 and proc.stats.out_of_position == 0
        monkeypatch.setattr(processor_module, "STALL_S", 60.0)
        await proc.idle_tick()  # records arrive again: nothing to do
        assert consumer.seeks == [6] and proc.stats.stalls == 1
    assert [w.window_id for w in ledger.windows()] == ["p0-0"]


async def test_a_partition_whose_records_wait_in_the_buffer_is_not_stalled(
        isolated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load the agent's buffer holds a partition's records for longer than STALL_S: the
    consumer handed them over (it serves the partition), the processor has not reached them. A
    seek then only makes the consumer fetch again what is in the buffer (skipped when it comes a
    second time). Not a stall; once the consumer hands nothing over either, it is one."""
    consumer = Consumer()
    async with running(isolated, tmp_path, consumer, records=6) as (proc, _ledger):
        consumer.highwater[0] = 40
        monkeypatch.setattr(processor_module, "STALL_S", 0.5)
        proc._states[0].last_record -= 1.0  # nothing handled for longer than STALL_S ...
        consumer.handed_at[0] = time.monotonic()  # ... but the consumer just handed one over
        await proc.idle_tick()
        assert consumer.seeks == [] and proc.stats.stalls == 0

        async def sought() -> bool:  # the consumer stops serving it: ticks until the seek
            await proc.idle_tick()
            return bool(consumer.seeks)

        await wait_until_async(sought, 5, "the stall once nothing is handed over", interval=0.05)
        assert consumer.seeks == [6] and proc.stats.stalls == 1
        assert time.monotonic() - consumer.handed_at[0] >= 0.5


async def test_a_consumer_positioned_inside_the_log_past_the_expected_offset_gets_longer(
        isolated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its position says it took the records from the expected offset on from Kafka (they are
    in Faust's buffers): IN_FLIGHT_STALL_S, not STALL_S. Past the log end (a broker restart's
    new, shorter log) it is the stall the rule is for: STALL_S."""
    consumer = Consumer()
    async with running(isolated, tmp_path, consumer, records=6) as (proc, _ledger):
        consumer.highwater[0] = 40
        proc._states[0].last_record -= 5.0  # quiet for 5 s, past STALL_S
        consumer.positions[0] = 40  # took everything up to the log end
        await proc.idle_tick()
        assert consumer.seeks == [] and proc.stats.stalls == 0
        consumer.positions[0] = 55  # past the log end: sits elsewhere
        await proc.idle_tick()
        assert consumer.seeks == [6] and proc.stats.stalls == 1

        await proc.handle(0, 6, b"d0", value("d0", 6), lambda: None)
        consumer.positions[0] = 30
        proc._states[0].last_record -= processor_module.IN_FLIGHT_STALL_S - 1
        proc._states[0].seeked_at -= processor_module.IN_FLIGHT_STALL_S
        await proc.idle_tick()
        assert consumer.seeks == [6] and proc.stats.stalls == 1
        proc._states[0].last_record -= 2.0  # quiet past the safety net
        await proc.idle_tick()
        assert consumer.seeks == [6, 7] and proc.stats.stalls == 2


async def test_a_claimed_partition_whose_records_are_on_their_way_is_not_stalled(
        isolated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = Consumer()
    async with running(isolated, tmp_path, consumer) as (proc, _ledger):
        proc.claim({0})
        await proc.idle_tick()  # taken; Kafka's log end not known yet
        consumer.highwater[0] = 25
        monkeypatch.setattr(processor_module, "STALL_S", 0.5)
        proc._unstarted[0] -= 1.0  # claimed longer than STALL_S ago
        consumer.handed_at[0] = time.monotonic()
        await proc.idle_tick()
        assert consumer.seeks == [] and proc.stats.stalls == 0
        monkeypatch.setattr(processor_module, "STALL_S", 0.0)
        await proc.idle_tick()
        assert consumer.seeks == [0] and proc.stats.stalls == 1


async def test_a_partition_taken_with_nothing_sealed_and_no_record_arriving_is_set_up_and_sought(
        isolated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing sealed in the partition's epoch: it is set up on its first record, and if none
    comes although Kafka has some, at once (at the log's first offset), then sought there."""
    consumer = Consumer()
    async with running(isolated, tmp_path, consumer) as (proc, _ledger):
        proc.claim({0})
        await proc.idle_tick()  # Kafka's log end not known yet: nothing to do
        consumer.highwater[0] = 0
        monkeypatch.setattr(processor_module, "STALL_S", 0.0)
        await proc.idle_tick()  # an empty log: nothing is stalled
        assert consumer.seeks == [] and proc.stats.stalls == 0
        consumer.highwater[0] = 25  # the new incarnation has records; the consumer sits past them
        await proc.idle_tick()
        assert consumer.seeks == [0] and proc.stats.stalls == 1
        for offset in range(5):
            await proc.handle(0, offset, b"d0", value("d0", offset), lambda: None)
        assert proc.stats.readings_in == 5 and proc.stats.out_of_position == 0


async def test_a_revoked_partition_is_not_sought(
        isolated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = Consumer()
    monkeypatch.setattr(processor_module, "STALL_S", 0.0)
    async with running(isolated, tmp_path, consumer) as (proc, _ledger):
        proc.claim({0})
        await proc.revoke({0})
        consumer.highwater[0] = 25
        await proc.idle_tick()
        assert consumer.seeks == [] and proc.stats.stalls == 0


async def test_a_hole_in_the_log_is_passed_after_a_few_seeks(
        isolated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tansu leaves holes in a partition's offsets after a restart: sought back to offset 3, the
    consumer hands over offset 4 first, every time. After HOLE_SEEKS seeks the processor takes
    the lowest later offset; windows stay contiguous (the next one starts after the hole)."""
    monkeypatch.setattr(processor_module, "RESEEK_S", 0.0)
    consumer = Consumer()
    # seqs 0..2 at 0.5 s: one open window, nothing sealed yet
    async with running(isolated, tmp_path, consumer, records=3) as (proc, ledger):
        # Offset 3 does not exist; the consumer hands over 5, then 4, then 5 again.
        for offset, seq in ((5, 4), (4, 3), (5, 4)):
            await proc.handle(0, offset, b"d0", value("d0", seq), lambda: None)
        assert consumer.seeks == [3] * processor_module.HOLE_SEEKS
        assert proc.stats.readings_in == 3 and proc.stats.holes == 0
        await proc.handle(0, 5, b"d0", value("d0", 4), lambda: None)  # not the lowest seen: seek
        assert consumer.seeks[-1] == 4 and proc.stats.readings_in == 3
        await proc.handle(0, 4, b"d0", value("d0", 3), lambda: None)  # the lowest: taken
        await proc.handle(0, 5, b"d0", value("d0", 4), lambda: None)  # seq 4 at 2.0 s: cuts
        assert proc.stats.holes == 1 and proc.stats.readings_in == 5
        await proc.settle()
    [w] = ledger.windows()
    assert (w.header["first_offset"], w.header["last_offset"], w.header["size"]) == (0, 4, 4)


def test_a_window_after_a_hole_starts_right_after_what_is_done() -> None:
    from vitalchain.ingest.windowing import PartitionWindower

    windower = PartitionWindower("raw", 0, window_us=2_000_000, salt_key=KEY, salt_key_id="k",
                                 sealed_offset=6, prev_end_us=None, sealed_leaf=lambda d, s: None)
    assert windower.offer(9, value("d0", 0), b"d0").outcome == "kept"  # offsets 7, 8: a hole
    closed = windower.cut_idle()
    assert closed is not None and (closed.first_offset, closed.last_offset) == (7, 9)


async def test_a_hole_at_the_sealed_offset_is_a_new_incarnation(
        isolated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record at the sealed offset was read from the incarnation it was sealed in; if it
    never comes although later ones do, the partition is another incarnation: a new epoch."""
    monkeypatch.setattr(processor_module, "RESEEK_S", 0.0)
    consumer = Consumer()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    async with InfluxClient(isolated) as influx:
        first = make_processor(isolated, ledger, influx, consumer)
        for offset in range(5):  # seqs 0..4 at 0.5 s: window 0..3 sealed at seq 4's arrival
            await first.handle(0, offset, b"d0", value("d0", offset), lambda: None)
        await first.settle()
        assert ledger.position(isolated.raw_topic, 0).sealed_offset == 3

        second = make_processor(isolated, ledger, influx, consumer)  # takes the partition over
        second.claim({0})
        consumer.highwater[0] = 9
        await second.idle_tick()
        assert consumer.seeks[-1] == 3  # the incarnation check
        for _ in range(processor_module.HOLE_SEEKS):
            await second.handle(0, 4, b"d0", value("d0", 20), lambda: None)
        assert ledger.epochs(isolated.raw_topic) == [] and consumer.seeks[-1] == 3
        await second.handle(0, 4, b"d0", value("d0", 20), lambda: None)
        [epoch] = ledger.epochs(isolated.raw_topic)
        assert "never came after 3 seeks" in epoch.reason and second.stats.epochs == 1
        assert consumer.seeks[-1] == 0  # read again from the new incarnation's first offset


async def test_seeks_repeated_on_the_idle_tick_count_for_the_hole_rule(
        isolated: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle tick repeats a pending seek every RESEEK_S; those seeks count too, or a hole is
    never passed when the tick's seek always comes just before the record-driven one (a soak's
    stream worker sat 18 s on a hole at offset 1 that way)."""
    monkeypatch.setattr(processor_module, "RESEEK_S", 0.0)
    consumer = Consumer()
    async with running(isolated, tmp_path, consumer) as (proc, _ledger):
        await proc.handle(0, 0, b"d0", value("d0", 0), lambda: None)
        await proc.handle(0, 2, b"d0", value("d0", 1), lambda: None)  # offset 1 does not exist
        consumer.highwater[0] = 3
        for _ in range(processor_module.HOLE_SEEKS):
            await proc.idle_tick()
        assert consumer.seeks == [1] * (processor_module.HOLE_SEEKS + 1)
        await proc.handle(0, 2, b"d0", value("d0", 1), lambda: None)
        assert proc.stats.holes == 1 and proc.stats.readings_in == 2
