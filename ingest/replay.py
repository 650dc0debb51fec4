"""What the bridge wrote to Kafka lately, to write again when a partition's offsets go backwards.

The bridge acknowledges a device's message to Mosquitto once Kafka acknowledged its records, so a
Kafka that loses acknowledged records loses readings nobody will send again. Two ways it happens
here, both seen as an acknowledgement whose offset is *at or below* one this bridge was given
before on the same partition:

- the broker lost its log (tansu keeps it in memory; in production: a recreated topic, a rebuilt
  cluster, an unclean leader election): every partition starts over at offset 0. What the stream
  had not sealed by then is gone;
- the broker numbered two batches with overlapping offsets. tansu 0.6.0 does this in the first
  second after a start, when a produce request fails with ``AlreadyExists`` on a batch object
  (logged by tansu, ``UnknownError`` at the producer) and the partition's high watermark falls
  back: the next batch is given offsets an earlier, acknowledged batch already holds, and a
  consumer, which moves past an offset once it has a record for it, never hands over the second
  record at that offset (measured: tests/test_bridge_replay.py, docs/RELIABILITY.md).

Either way, the records this bridge had acknowledged on that partition within the last
``horizon_s`` seconds are written again (and so is the record whose acknowledgement showed it).
The stream drops what it already sealed (dedup by device and sequence number, across epochs), so
a replay costs duplicates, never a double; what the stream had not sealed reaches it again. A
loss older than the horizon is still reported by ``vitalchain audit`` as a Kafka restart loss.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# After offsets went back, acknowledgements at offsets the earlier numbering had used are written
# again one by one for this long: tansu resets a partition's numbering when the topic is created
# after produce requests reached it (the bridge's retries hit a restarted broker before
# `vitalchain stack` creates the topics), and a consumer then skips the later record at each
# offset given twice, whichever bridge wrote it (measured: within a second of the broker's start).
# A replayed record given such an offset is written again too, so after a restart of a long log
# this writes duplicates for up to ZONE_S; the stream drops them.
ZONE_S = 3.0


@dataclass(frozen=True)
class Replay:
    """Why and what to write again: ``records`` are (key, value) in the order first written.

    ``whole``: the offsets went back, every record of the horizon is written again; otherwise
    one record whose offset the earlier numbering had used (see ``ZONE_S``).
    """

    partition: int
    offset: int  # the acknowledgement that went backwards
    high: int  # the highest offset acknowledged on the partition before it
    records: list[tuple[bytes, bytes]]
    whole: bool = True


@dataclass
class _Partition:
    high: int | None = None
    acked: deque[tuple[float, bytes, bytes]] = field(default_factory=deque)
    size: int = 0  # bytes of the keys and values in ``acked``
    zone_high: int = -1  # offsets at or below this were used by the numbering before ...
    zone_until: float = 0.0  # ... until this time (monotonic) they are suspect


class ReplayBuffer:
    """Per partition: the highest offset acknowledged and the records acknowledged lately.

    Memory is bounded by ``horizon_s`` and ``max_bytes`` per partition (the oldest go first,
    counted in ``dropped``): a record of a signed message of 10 readings is about 3 KB, so 60 s
    at 10,000 readings/s over four partitions is about 45 MB each. ``horizon_s <= 0`` turns
    replays off.
    """

    def __init__(self, horizon_s: float, max_bytes: int = 64 << 20,
                 zone_s: float = ZONE_S) -> None:
        self.horizon_s = horizon_s
        self.max_bytes = max_bytes
        self.dropped = 0  # records let go before their horizon to stay within max_bytes
        self.zone_s = zone_s
        self._partitions: dict[int, _Partition] = {}

    @property
    def held(self) -> int:
        """Records kept for a possible replay (all partitions; read from any thread)."""
        return sum(len(p.acked) for p in list(self._partitions.values()))

    @property
    def held_bytes(self) -> int:
        """Bytes of the records kept (keys and values, all partitions)."""
        return sum(p.size for p in list(self._partitions.values()))

    def acked(self, partition: int, offset: int, key: bytes, value: bytes,
              now: float) -> Replay | None:
        """Note Kafka's acknowledgement of one record; a :class:`Replay` if it must be written
        again with others (offsets went back) or alone (its offset was used before, lately)."""
        if self.horizon_s <= 0:
            return None
        state = self._partitions.setdefault(partition, _Partition())
        horizon = now - self.horizon_s
        while state.acked and state.acked[0][0] < horizon:
            self._pop_oldest(state)
        if state.high is not None and offset <= state.high:
            records = [(k, v) for _, k, v in state.acked]
            records.append((key, value))
            replay = Replay(partition, offset, state.high, records)
            # The replayed records come back with new offsets and are kept again then.
            state.acked.clear()
            state.size = 0
            state.zone_high = max(state.high, state.zone_high if now < state.zone_until else -1)
            state.zone_until = now + self.zone_s
            state.high = offset
            return replay
        state.high = offset
        if offset <= state.zone_high and now < state.zone_until:
            return Replay(partition, offset, state.zone_high, [(key, value)], whole=False)
        state.acked.append((now, key, value))
        state.size += len(key) + len(value)
        while state.size > self.max_bytes and len(state.acked) > 1:
            self._pop_oldest(state)
            self.dropped += 1
        return None

    @staticmethod
    def _pop_oldest(state: _Partition) -> None:
        _, key, value = state.acked.popleft()
        state.size -= len(key) + len(value)
