"""A flush of bundles wakes kafka-python's sender at most twice, on the real Kafka (tansu), and
every record sent in the block is still acknowledged; the producer is left as it was.

Why: ``ingest.bridge.wakes_sender_at_most_twice`` shadows a kafka-python method for the length
of a flush. A wake-up lost for good would leave records lingering in the producer (the bridge's
PUBACKs wait on them), and a shadow left behind would silence every later send's wake-up."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer

from vitalchain.config import Settings
from vitalchain.ingest.bridge import wakes_sender_at_most_twice


def _producer(settings: Settings) -> KafkaProducer:
    # The bridge's own settings that matter here (ingest/bridge.py, _make_producer).
    return KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                         enable_idempotence=False, linger_ms=5, retries=5,
                         request_timeout_ms=5000, delivery_timeout_ms=10000)


@pytest.mark.e2e
def test_a_flush_wakes_the_sender_at_most_twice_and_every_record_arrives(
        isolated: Settings) -> None:
    producer = _producer(isolated)
    try:
        partitions = sorted(producer.partitions_for(isolated.raw_topic) or ())
        assert len(partitions) >= 2, "the raw topic needs partitions for a flush of several"
        sender = producer._sender
        woken: list[int] = []
        client_wakeup = sender._client.wakeup
        sender._client.wakeup = lambda: (woken.append(1), client_wakeup())[1]
        futures = []
        for round_ in range(3):
            # Several flushes, one record per partition each: every send that opens a batch
            # would wake the sender (the first flush opens one per partition); at most two do.
            before = len(woken)
            with wakes_sender_at_most_twice(producer):
                futures += [producer.send(isolated.raw_topic, value=f"{round_}-{p}".encode(),
                                          partition=p) for p in partitions]
            assert len(woken) - before <= 2
        # Every record of every flush is acknowledged (a lost wake-up would strand them).
        offsets = [future.get(timeout=30) for future in futures]
        assert sorted({m.partition for m in offsets}) == partitions
        assert "wakeup" not in vars(sender)  # the shadow is gone: sends wake it again
        # Without the block (the accumulator now empty), the same flush wakes it per partition.
        before = len(woken)
        after = [producer.send(isolated.raw_topic, value=b"after", partition=p)
                 for p in partitions]
        assert len(woken) - before == len(partitions)
        assert all(future.get(timeout=30) for future in after)
    finally:
        producer.close(timeout=10)


def test_a_producer_without_the_method_is_left_alone() -> None:
    """Another kafka-python (no ``_sender.wakeup``): the block runs, nothing is shadowed."""
    class Other:
        pass

    other = Other()
    with wakes_sender_at_most_twice(other):
        pass
    assert vars(other) == {}
