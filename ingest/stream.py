"""The Faust app and agent that seal windows from the raw topic.

Faust is used for what it does well (consumer group membership, partition assignment, fetching,
committing acked offsets) and nothing else: no windowed tables (windows are lost on rebalance and
expiry does not fire after recovery in faust-streaming), no Faust-managed positions.  How offsets
stay safe:

- the agent iterates ``stream.noack()``, so Faust never acks a record on its own; the processor
  acks records only once their window is sealed, in offset order.  ``Consumer._new_offset``
  (faust/transport/consumer.py) commits the end of the first run of consecutive acked offsets,
  so the committed offset never passes an unsealed record;
- ``stream_wait_empty=False``: on revocation Faust would otherwise wait for every unacked message
  (``Consumer.wait_empty``), i.e. for open windows that can only be sealed later;
- after assignment Faust seeks to Kafka's committed offsets (``Recovery._resume_streams`` ->
  ``Consumer.perform_seek``), *after* the ``on_partitions_assigned`` signal, so a seek there would
  be undone; instead the processor checks every record against the ledger's position and seeks
  (on the consumer's thread, see ``seek`` in :func:`create_app`) when the consumer is ahead of what is
  sealed, or to the sealed offset to check the partition's incarnation (docs/STREAM.md, "Epochs");
- the producer (dead letters only) keeps aiokafka's default ``enable_idempotence=False``: tansu
  rejects idempotent producers.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import defaultdict
from typing import Any

import faust
from aiokafka.errors import IllegalStateError
from faust.types import TP

from vitalchain.config import Settings
from vitalchain.core.gcpace import raise_gen0
from vitalchain.core.integrity import salt_key_id
from vitalchain.ingest.kafka_compat import guard_connection_close, shorten_fetch_wait
from vitalchain.ingest.processor import StreamProcessor
from vitalchain.ingest.receipts import ReceiptWriter
from vitalchain.ingest.sink import LedgerAppender, Sealer
from vitalchain.ingest.windowing import DeadLetter
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.saltkey import load_or_create_salt_key

log = logging.getLogger("vitalchain.stream")

# Short group timeouts: a new group's first join otherwise waits out the rebalance timeout
# (tansu), and a killed worker's partitions should move within seconds.
SESSION_TIMEOUT_S = 6.0
HEARTBEAT_S = 1.0
REBALANCE_TIMEOUT_S = 3.0
IDLE_TICK_S = 0.25


class _NoReadOffsets(defaultdict):
    """Faust's consumer drops a fetched record whose offset is below the last one it handed
    over for the partition (its *read offset*), and sets that read offset as it hands records
    to the agent's buffer, ahead of the processor. After a seek back (the processor's, to the
    offset the ledger expects) a record fetched before the seek can still come first and raise
    the read offset again, and the record sought is then dropped when it arrives. The processor
    is the authority on positions (it skips what the ledger says is done, seeks back when a
    record comes early, passes holes in the log), so Faust filters nothing here."""

    def __init__(self) -> None:
        super().__init__(lambda: None)
        # Partition -> when the consumer last handed one of its records over (monotonic): the
        # processor's stall rule (STALL_S) must not take a partition whose records wait in the
        # agent's buffer for one the consumer no longer serves. Faust sets a read offset as it
        # hands a record over, and on its own seeks (which restart the wait: harmless).
        self.handed_at: dict[int, float] = {}

    def __getitem__(self, key: Any) -> None:
        return None

    def __setitem__(self, key: Any, value: Any) -> None:
        self.handed_at[key.partition] = time.monotonic()


def faust_datadir(settings: Settings, worker_name: str) -> str:
    return str(settings.state_dir / "faust" / f"{settings.stream_app_id}-{worker_name}")


def progress_line(proc: StreamProcessor) -> str:
    """The processor's counters plus the receipt writer's (``received_queued`` holds readings
    back from the screen: taken, not yet in InfluxDB; ``received_flushes`` the writes that took
    them to InfluxDB, each one POST of up to 5,000 lines: written/flushes is the readings per
    POST influxd got; ``age_taken_ms`` and ``age_written_ms``, p50/p99 since the last line, how
    old readings were, from the bridge's stamp, when taken and when written: where a reading's
    way to the screen spends its time after the bridge)."""
    receipts = proc.sealer.receipts
    extra = ("" if receipts is None else
             f" received_written={receipts.stats.written} received_queued={receipts.queued}"
             f" received_flushes={receipts.stats.flushes} {receipts.ages.line()}")
    return proc.stats.line() + extra


def create_app(settings: Settings, worker_name: str | None = None,
               progress_every_s: float = 2.0) -> faust.App:
    """The Faust app of one stream worker (several workers share partitions via the group)."""
    worker_name = worker_name or str(os.getpid())
    guard_connection_close()
    shorten_fetch_wait(settings.kafka_fetch_wait_ms)
    # Faust creates only the last level of its data dir.
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.stream_app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        datadir=faust_datadir(settings, worker_name),
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        topic_allow_declare=False,
        stream_wait_empty=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=HEARTBEAT_S,
        broker_rebalance_timeout=REBALANCE_TIMEOUT_S,
        broker_commit_interval=1.0,
        producer_acks=-1,
    )
    # Before the consumer starts: its fetch loop binds the read-offset map's lookup once.
    read_offsets = app.consumer._read_offset = _NoReadOffsets()
    raw = app.topic(settings.raw_topic, key_type=bytes, value_type=bytes,
                    key_serializer="raw", value_serializer="raw",
                    partitions=settings.partitions)
    dlq = app.topic(settings.dlq_topic, key_type=bytes, value_type=bytes,
                    key_serializer="raw", value_serializer="raw")
    state: dict[str, Any] = {}

    async def send_dead_letter(letter: DeadLetter) -> None:
        future = await dlq.send(key=letter.key, value=letter.value)
        await future  # wait for the broker's ack before the range can be sealed

    async def seek(partition: int, offset: int) -> None:
        # On the consumer's own thread: ``app.consumer.seek`` calls aiokafka's seek from this
        # thread while the consumer thread drains fetched records, which crashed the fetcher
        # (KeyError in Fetcher.fetched_records) when the stream seeks right after taking a
        # partition.  Not ``seek_wait`` either: it then waits for the position (up to Faust's
        # broker_request_timeout, 90 s) while the partition's lock is held; with it the stream
        # stalled after a Kafka restart in tests/test_pipeline_epochs.py (cause not pinned).
        tp = TP(settings.raw_topic, partition)
        thread = app.consumer._thread
        try:
            await thread.call_thread(thread.seek, tp, offset)
        except IllegalStateError as exc:  # no longer assigned: its revocation drops the state
            log.info("partition %s: not assigned, seek to %s skipped (%s)", partition, offset, exc)
            return
        # Faust's read offsets filter nothing here (_NoReadOffsets): nothing to reset.

    async def earliest(partition: int) -> int:
        tp = TP(settings.raw_topic, partition)
        offsets = await app.consumer.earliest_offsets(tp)
        return int(offsets.get(tp) or 0)

    def highwater(partition: int) -> int | None:
        try:
            value = app.consumer.highwater(TP(settings.raw_topic, partition))
        except Exception:  # not assigned / consumer not started: unknown
            return None
        return value if isinstance(value, int) else None

    def position(partition: int) -> int | None:
        # aiokafka's fetch position (advanced as its records go to Faust), read from this
        # thread: one int attribute, no call into the consumer's thread.
        consumer = getattr(app.consumer._thread, "_consumer", None)
        try:
            tp_state = consumer._subscription.subscription.assignment.state_value(
                TP(settings.raw_topic, partition))
        except AttributeError:  # no consumer, subscription or assignment (yet)
            return None
        if tp_state is None or not tp_state.has_valid_position:
            return None
        return int(tp_state.position)

    def processor() -> StreamProcessor:
        if "processor" not in state:
            key = load_or_create_salt_key(settings)
            ledger = Ledger(settings.ledger_target)
            influx = InfluxClient(settings)
            state["processor"] = StreamProcessor(
                settings.raw_topic, ledger=ledger,
                sealer=Sealer(ledger, influx, send_dead_letter,
                              ReceiptWriter(influx, flush_s=settings.receipt_flush_seconds),
                              LedgerAppender(settings.ledger_target)),
                window_seconds=settings.window_seconds,
                idle_seal_seconds=settings.idle_seal_seconds, salt_key=key,
                salt_key_id=salt_key_id(key), seek=seek, earliest=earliest,
                highwater=highwater, fetched=read_offsets.handed_at.get, position=position)
        return state["processor"]

    @app.agent(raw, name=f"{settings.stream_app_id}.seal", concurrency=1)
    async def seal_windows(stream: faust.StreamT) -> None:
        proc = processor()
        async for event in stream.noack().events():
            message = event.message
            await proc.handle(message.partition, message.offset, message.key or b"",
                              message.value or b"", event.ack)

    @app.timer(interval=IDLE_TICK_S)
    async def idle_seal() -> None:
        await processor().idle_tick()

    @app.timer(interval=progress_every_s)
    async def progress() -> None:
        print(progress_line(processor()), file=sys.stderr, flush=True)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
        processor().claim({tp.partition for tp in assigned if tp.topic == settings.raw_topic})

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        await processor().revoke({tp.partition for tp in revoked
                                  if tp.topic == settings.raw_topic})

    @app.on_before_shutdown.connect
    def on_shutdown(sender: Any, **kwargs: Any) -> None:
        if "processor" in state:
            state["processor"].stopping = True
            print(progress_line(state["processor"]), file=sys.stderr, flush=True)

    app.vitalchain_processor = processor  # type: ignore[attr-defined]
    return app


def run_worker(settings: Settings, worker_name: str | None = None, loglevel: str = "warning",
               progress_every_s: float = 2.0) -> None:
    """Run one stream worker until SIGTERM/SIGINT (blocks; exits the process)."""
    raise_gen0()  # D51: a window's readings die young instead of being walked
    app = create_app(settings, worker_name, progress_every_s)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
