"""The bridge's replay buffer (ingest/replay.py): which acknowledged records are written again.

The pipeline-level proof that a Kafka restart now loses nothing the bridge still holds is
tests/test_pipeline_epochs.py; these pin the rule itself.
"""

from __future__ import annotations

import json

import pytest

from tests.bridge_support import make_reading
from vitalchain.ingest.replay import ReplayBuffer


def ack(buffer: ReplayBuffer, partition: int, offset: int, at: float, name: str):
    return buffer.acked(partition, offset, name.encode(), f"v-{name}".encode(), at)


def test_growing_offsets_replay_nothing() -> None:
    buffer = ReplayBuffer(horizon_s=60)
    for offset in range(100):
        assert ack(buffer, 0, offset, offset * 0.1, f"r{offset}") is None
    assert buffer.held == 100


def test_offsets_going_back_replay_recent_records_and_the_one_that_showed_it() -> None:
    buffer = ReplayBuffer(horizon_s=10)
    for offset in range(5):  # acknowledged at t = 0..4
        ack(buffer, 1, 100 + offset, float(offset), f"old{offset}")
    ack(buffer, 2, 7, 4.0, "other-partition")
    replay = ack(buffer, 1, 0, 12.5, "new0")  # the broker started over; t=12.5: 0..2 too old
    assert replay is not None
    assert (replay.partition, replay.offset, replay.high) == (1, 0, 104)
    assert [k for k, _ in replay.records] == [b"old3", b"old4", b"new0"]
    assert replay.records[0][1] == b"v-old3"
    assert ack(buffer, 2, 8, 12.6, "other-partition-2") is None
    # the replayed records come back with fresh offsets: once past the zone's time (3 s), or
    # above the offsets the old numbering had used, no second replay for them
    assert ack(buffer, 1, 1, 15.6, "old3") is None
    assert ack(buffer, 1, 2, 15.6, "old4") is None


def test_an_offset_given_twice_is_a_replay() -> None:
    """tansu 0.6.0 after a start: a batch numbered over one it had acknowledged (D32)."""
    buffer = ReplayBuffer(horizon_s=60)
    ack(buffer, 0, 0, 1.0, "a")
    ack(buffer, 0, 1, 1.0, "b")
    replay = ack(buffer, 0, 1, 1.2, "c")
    assert replay is not None and [k for k, _ in replay.records] == [b"a", b"b", b"c"]


def test_horizon_zero_turns_replays_off_and_holds_nothing() -> None:
    buffer = ReplayBuffer(horizon_s=0)
    ack(buffer, 0, 10, 1.0, "a")
    assert ack(buffer, 0, 0, 2.0, "b") is None
    assert buffer.held == 0


def test_memory_is_bounded_per_partition() -> None:
    record_bytes = len(b"r0") + len(b"v-r0")
    buffer = ReplayBuffer(horizon_s=1e9, max_bytes=3 * record_bytes)
    for offset in range(10):
        ack(buffer, 0, offset, 0.0, f"r{offset}")
    assert buffer.held == 3 and buffer.held_bytes == 3 * record_bytes and buffer.dropped == 7
    replay = ack(buffer, 0, 0, 0.0, "x")
    assert replay is not None
    assert [k for k, _ in replay.records] == [b"r7", b"r8", b"r9", b"x"]
    assert buffer.held_bytes == 0


@pytest.mark.parametrize("seconds", ["-1", "soon"])
def test_bad_replay_setting_is_refused(seconds: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from vitalchain.config import ConfigError, load_settings

    monkeypatch.setenv("VITALCHAIN_BRIDGE_REPLAY_SECONDS", seconds)
    with pytest.raises(ConfigError, match="BRIDGE_REPLAY_SECONDS"):
        load_settings()


def test_a_replay_is_stamped_so_it_never_passes_for_the_record_it_repeats() -> None:
    from vitalchain.core.payload.record import decode, encode, encode_v1, replayed
    from vitalchain.ingest.windowing import record_hash

    for original in (encode([make_reading("d-1", 7), make_reading("d-1", 8)], 1796000000001000),
                     encode_v1(make_reading("d-1", 7), 1796000000001000)):
        once = replayed(original, 1796000000500000)
        twice = replayed(once, 1796000000900000)
        assert once.endswith(b',"replayed_us":1796000000500000}')
        assert twice.endswith(b',"replayed_us":1796000000900000}')
        assert twice.count(b"replayed_us") == 1
        assert len({record_hash(b"d-1", v) for v in (original, once, twice)}) == 3
        # the stream reads the same readings from each, and when the last replay was
        records = [decode(v) for v in (original, once, twice)]
        assert records[0].readings == records[1].readings == records[2].readings
        assert [r.replayed_us for r in records] == [None, 1796000000500000, 1796000000900000]


def test_a_bad_replay_stamp_is_refused_by_the_stream() -> None:
    from vitalchain.core.payload.record import RecordError, decode

    with pytest.raises(RecordError, match="replayed_us"):
        decode(json.dumps({"v": 2, "received_us": 1, "readings": [make_reading("d-1", 7)],
                           "replayed_us": "soon"}).encode())


def test_after_offsets_went_back_reused_offsets_are_written_again_one_by_one() -> None:
    """tansu resets a partition's numbering when the topic is created after produce requests
    reached it: later records get offsets earlier ones hold, and a consumer skips them."""
    buffer = ReplayBuffer(horizon_s=60, zone_s=5)
    for offset in range(10):  # before the numbering was reset
        ack(buffer, 0, offset, 1.0, f"p{offset}")
    whole = ack(buffer, 0, 2, 1.5, "q2")  # reset: offsets went back
    assert whole is not None and whole.whole and len(whole.records) == 11
    one = ack(buffer, 0, 3, 1.6, "q3")  # above the new high, but offset 3 was used before
    assert one is not None and not one.whole and one.records == [(b"q3", b"v-q3")]
    assert ack(buffer, 0, 10, 1.7, "q10") is None  # past what the old numbering had used
    assert ack(buffer, 0, 11, 1.8, "q11") is None
    # once the zone has passed, an offset below it is an ordinary new one again (no replay)
    buffer2 = ReplayBuffer(horizon_s=60, zone_s=5)
    for offset in range(10):
        ack(buffer2, 0, offset, 1.0, f"p{offset}")
    ack(buffer2, 0, 0, 2.0, "restart")
    assert ack(buffer2, 0, 1, 8.0, "late") is None
