"""Several MQTT messages in one raw-topic record (a bundle, vitalchain/core/payload/record.py):
the framing, the windows the stream cuts from bundles (pure), and the real bridge and stream
(Mosquitto, tansu, InfluxDB: e2e) carrying every reading exactly once."""

from __future__ import annotations

import base64
import json
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2

from tests.test_windowing import SECOND, T0, reading, record, windower
from vitalchain.core.payload.record import (
    BUNDLE_SEPARATOR,
    RecordError,
    decode,
    encode,
    encode_bundle,
    record_readings,
    replayed,
    split_bundle,
)


def batch(device: str, first_seq: int, n: int, ts: int, received_us: int = 1,
          signed: dict | None = None) -> bytes:
    return encode([reading(device, first_seq + i, ts + i * 100_000) for i in range(n)],
                  received_us, signed)


def signed_part(readings: list[dict]) -> dict:
    return {"at": [readings[0]["ts_us"], readings[0]["seq"]], "key_id": "k1", "sig": "c2ln",
            "readings": readings}


# --- the framing ----------------------------------------------------------------------------

def test_a_bundle_of_one_is_the_record_itself() -> None:
    value = batch("d1", 0, 3, T0)
    assert encode_bundle([value]) == value
    assert split_bundle(value) == [value]
    old = record(reading("d1", 9, T0))  # version 1 too
    assert split_bundle(old) == [old]


def test_a_bundle_round_trips_and_lists_every_reading_in_order() -> None:
    parts = [batch("d1", 0, 3, T0, received_us=5), record(reading("d2", 7, T0), 6),
             batch("d3", 4, 2, T0, received_us=7, signed=signed_part([reading("d3", 4, T0)]))]
    value = encode_bundle(parts)
    assert value.count(BUNDLE_SEPARATOR) == 2
    assert split_bundle(value) == parts
    items = record_readings(value)
    assert [(r["device_id"], r["seq"], r["received_us"]) for r in items] == [
        ("d1", 0, 5), ("d1", 1, 5), ("d1", 2, 5), ("d2", 7, 6), ("d3", 4, 7), ("d3", 5, 7)]
    assert [("signed" in r) for r in items] == [False] * 4 + [True, True]
    assert record_readings(value) == [x for p in parts for x in record_readings(p)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=20), min_size=1, max_size=5))
def test_no_record_holds_a_newline_byte_whatever_its_strings(texts: list[str]) -> None:
    """The framing's premise: compact JSON escapes a newline inside a string."""
    readings = [{**reading("d1", i, T0 + i), "patient_id": t} for i, t in enumerate(texts)]
    value = encode(readings, 1, {"at": [T0, 0], "key_id": "\n".join(texts), "sig": "x",
                                 "readings": readings})
    assert BUNDLE_SEPARATOR not in value
    assert split_bundle(encode_bundle([value, value])) == [value, value]


def test_bad_bundles_are_refused() -> None:
    with pytest.raises(RecordError):
        encode_bundle([])
    with pytest.raises(RecordError, match="newline"):
        encode_bundle([b'{"a":\n1}'])
    for value in (b"", b"\n", batch("d1", 0, 1, T0) + b"\n"):
        with pytest.raises(RecordError):
            record_readings(value)  # an empty part is no record


def test_a_replayed_bundle_stamps_every_record_once() -> None:
    parts = [batch("d1", 0, 2, T0), batch("d2", 0, 2, T0)]
    once = replayed(encode_bundle(parts), 500)
    twice = replayed(once, 900)
    assert [decode(p).replayed_us for p in split_bundle(once)] == [500, 500]
    assert [decode(p).replayed_us for p in split_bundle(twice)] == [900, 900]
    assert all(p.count(b"replayed_us") == 1 for p in split_bundle(twice))
    assert record_readings(twice) == record_readings(encode_bundle(parts))


# --- the stream's windows from bundles (pure) ----------------------------------------------

def test_a_bundle_of_several_devices_goes_into_one_window_message_by_message() -> None:
    w = windower()  # 2 s windows
    r3 = [reading("d3", 0, T0 + 30)]
    first = encode_bundle([batch("d1", 0, 3, T0, 5), batch("d2", 0, 2, T0 + 10, 6),
                           encode(r3, 7, signed_part(r3))])
    result = w.offer(0, first, b"")
    assert result.outcome == "kept" and result.window_id == "p3-0"
    assert [(r.canonical["device_id"], r.canonical["seq"], r.received_us)
            for r in result.kept] == [("d1", 0, 5), ("d1", 1, 5), ("d1", 2, 5),
                                      ("d2", 0, 6), ("d2", 1, 6), ("d3", 0, 7)]
    assert [r.signed for r in result.kept] == [None] * 5 + [signed_part(r3)]
    # A bundle spanning the cut is kept whole in the window it starts (never split) ...
    second = encode_bundle([batch("d1", 3, 1, T0 + 1_900_000), batch("d2", 2, 1, T0 + 5 * SECOND)])
    assert w.offer(1, second).closed is None
    # ... and the next record past the window length closes it, with both bundles' readings.
    closed = w.offer(2, batch("d1", 4, 1, T0 + 6 * SECOND)).closed
    assert closed is not None and (closed.first_offset, closed.last_offset) == (0, 1)
    assert closed.header["size"] == 8
    # The same readings one message per record give the same leaves.
    plain = windower()
    leaves = [r.leaf for offset, value in enumerate(split_bundle(first) + split_bundle(second))
              for r in plain.offer(offset, value).kept]
    assert sorted(leaves) == sorted(closed.leaf_hashes)


def test_dedup_across_bundles_and_a_bad_message_is_dead_lettered_alone() -> None:
    w = windower()
    good = batch("d1", 0, 2, T0, 5)
    w.offer(0, good)
    bad = encode([reading("d2", 0, T0)], 6)[:-1] + b',"extra":1}'  # not a record of ours
    resent = batch("d1", 0, 2, T0, 8)  # a redelivery of the first message: duplicates
    conflict = encode([reading("d3", 0, T0), reading("d3", 0, T0 + 1)], 9)
    result = w.offer(1, encode_bundle([resent, bad, conflict]), b"")
    assert (len(result.kept), result.duplicates, result.conflicts, result.invalid) == (1, 2, 1, 1)
    closed = w.cut_idle()
    assert closed is not None and closed.header["size"] == 3
    letters = [json.loads(d.value) for d in closed.dead_letters]
    assert [x["reason"] for x in letters] == ["invalid_record", "seq_conflict"]
    assert letters[0]["detail"].startswith("messages[1]: ")
    assert letters[1]["detail"].startswith("messages[2]: readings[1]: device d3 seq 0")
    # Each dead letter keeps the bytes of its own message, and that message's received_us.
    assert base64.b64decode(letters[0]["payload_b64"]) == bad
    assert base64.b64decode(letters[1]["payload_b64"]) == conflict
    assert [x["received_us"] for x in letters] == [6, 9]


def test_a_replay_of_a_bundle_after_a_crash_reproduces_the_window() -> None:
    values = [encode_bundle([batch(f"d{d}", 3 * i, 3, T0 + i * 700_000, 1) for d in range(4)])
              for i in range(8)]
    first = windower()
    closed = [c for o, v in enumerate(values) if (c := first.offer(o, v).closed)]
    assert closed and closed[0].header["size"] == 4 * 3 * closed[0].last_offset + 12
    again = windower(sealed_offset=closed[0].last_offset,
                     prev_end_us=closed[0].header["end_us"])
    replay = [again.offer(o, v) for o, v in enumerate(values)]
    assert [r.outcome for r in replay[:closed[0].last_offset + 1]] == ["already_done"] * (
        closed[0].last_offset + 1)
    tail, tail_again = first.cut_idle(), again.cut_idle()
    assert tail is not None and tail_again is not None and tail.header == tail_again.header


def test_the_bridge_replays_a_bundle_whole_to_the_partition_it_was_acknowledged_on(
        tmp_path: Path) -> None:
    """Offsets going back on a partition (ingest/replay.py): a bundle of several devices, which
    has no key to be partitioned by, is written again whole, stamped, to its own partition."""
    from types import SimpleNamespace

    from vitalchain.config import load_settings
    from vitalchain.ingest.bridge import Bridge, _Record

    bridge = Bridge(load_settings(environ={}, state_dir=tmp_path))
    sent: list[_Record] = []
    bridge._send = sent.append  # type: ignore[method-assign]  # what would go to Kafka
    bundle = encode_bundle([batch("d1", 0, 2, T0), batch("d2", 0, 2, T0)])
    later = batch("d1", 2, 1, T0 + SECOND)
    topic = bridge.settings.raw_topic
    first = _Record(0, topic, b"", bundle, None, 4, partition=2, tokens=[1, 2])
    bridge._check_offsets(first, SimpleNamespace(partition=2, offset=7))
    assert sent == []
    # The broker lost its log: the next acknowledgement on partition 2 is at offset 0.
    bridge._check_offsets(_Record(3, topic, b"d1", later, None, 1, partition=2,
                                  tokens=[3]), SimpleNamespace(partition=2, offset=0))
    assert [(r.partition, r.replay, r.key) for r in sent] == [(2, True, b""), (2, True, b"d1")]
    assert record_readings(sent[0].value) == record_readings(bundle)
    assert all(decode(p).replayed_us is not None for p in split_bundle(sent[0].value))
    assert bridge.counters.replays == 1 and bridge.counters.replayed == 2


# --- the real bridge and stream ------------------------------------------------------------

def _raw_records(settings_: Any) -> list[tuple[int, int, bytes, bytes]]:
    """(partition, offset, key, value) of every record on the raw topic."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings_.kafka_bootstrap,
                             enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(settings_.raw_topic, p)
                      for p in consumer.partitions_for_topic(settings_.raw_topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        out: list[tuple[int, int, bytes, bytes]] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, "reading the raw topic took over 60 s"
            for tp, batch_ in consumer.poll(timeout_ms=300).items():
                out += [(tp.partition, r.offset, r.key, r.value) for r in batch_]
        return out
    finally:
        consumer.close()


def _publish_backlog(devices: dict[str, Any], messages: int, per_message: int,
                     t0_us: int) -> dict[tuple[str, int], dict[str, Any]]:
    """Each device publishes ``messages`` messages of ``per_message`` readings, interleaved,
    timestamps growing by 1 ms per reading over the whole set (nothing is late)."""
    from tests.bridge_support import make_reading

    sent: dict[tuple[str, int], dict[str, Any]] = {}
    tick = 0
    for m in range(messages):
        for dev, device in devices.items():
            readings = []
            for i in range(per_message):
                r = make_reading(dev, m * per_message + i)
                r["ts_us"] = t0_us + tick * 1000
                tick += 1
                readings.append(r)
                sent[(dev, r["seq"])] = r
            device.publish({"readings": readings})
    return sent


@pytest.mark.e2e
def test_bundles_of_several_devices_through_the_bridge_and_the_stream(isolated,
                                                                      tmp_path: Path) -> None:
    """A backlog queued for the bridge's session comes in a burst: the bridge bundles it (per
    partition, each device in the partition its key maps to), PUBACKs every message, and the
    stream seals every reading exactly once."""
    from tests.bridge_support import Device, bridge_thread, provision_devices, unique_device
    from tests.common_support import wait_until
    from tests.stream_support import Input, Worker, all_done, check_sealed
    from vitalchain.ingest.bridge import Bridge, forget_session
    from vitalchain.ingest.bridge_provision import provision_bridge

    cfg = isolated.with_overrides(window_seconds=2.0, idle_seal_seconds=2.5,
                                  flood_rate_per_second=1e9, flood_burst=10**9,
                                  stream_app_id=f"vc-bundle-{random.randint(0, 1 << 30)}")
    names = [unique_device("bnd") for _ in range(6)]
    devices = {d: Device(cfg, d, pw) for d, pw in provision_devices(cfg, names).items()}
    instance, group = random.randint(1000, 9999), f"bnd-{names[0]}"
    provision_bridge(cfg, instance)
    try:
        with bridge_thread(Bridge(cfg, instance=instance, group=group)):
            pass  # the session and its subscription exist: what follows is queued for it
        sent = _publish_backlog(devices, messages=40, per_message=5,
                                t0_us=time.time_ns() // 1000 - 60_000_000)
        for device in devices.values():
            device.wait_acked(30)
        with bridge_thread(Bridge(cfg, instance=instance, group=group)) as bridge:
            wait_until(lambda: bridge.counters.acked == 240 and bridge.counters.forwarded
                       == len(sent), 60, "every message forwarded and acked")
            assert bridge.in_flight == 0, bridge.progress_line()
            counted = (bridge.counters.raw_records, bridge.counters.raw_messages)
        records = _raw_records(cfg)
        messages = [len(split_bundle(v)) for _p, _o, _k, v in records]
        assert sum(messages) == 240 and max(messages) > 1, messages  # bundled, none lost
        assert len(records) < 240
        assert counted == (len(records), 240)  # what the progress line says of bundles
        seen: Counter[tuple[str, int]] = Counter()
        for partition, _offset, key, value in records:
            items = record_readings(value)
            devs = {r["device_id"] for r in items}
            assert key == (devs.pop().encode() if len(devs) == 1 else b"")
            for r in items:
                expected = (murmur2(r["device_id"].encode()) & 0x7FFFFFFF) % cfg.partitions
                assert partition == expected, "a device's messages left its key's partition"
                seen[(r["device_id"], r["seq"])] += 1
        assert seen == Counter(dict.fromkeys(sent, 1))
        # A device's messages stay in order within its partition.
        for dev in names:
            seqs = [r["seq"] for *_x, v in sorted(records) for r in record_readings(v)
                    if r["device_id"] == dev]
            assert seqs == sorted(seqs)
        ends: dict[int, int] = {p: 0 for p in range(cfg.partitions)}
        for partition, offset, _k, _v in records:
            ends[partition] = max(ends[partition], offset + 1)
        worker = Worker(cfg, "bundles", tmp_path)
        try:
            wait_until(lambda: all_done(cfg, ends), 90, "the stream sealed every bundle")
        finally:
            worker.kill(signal.SIGTERM)
        check_sealed(cfg, Input([], dict(sent)))
    finally:
        for device in devices.values():
            device.close()
        forget_session(cfg, instance)


@pytest.mark.e2e
def test_sigkill_of_the_bridge_with_bundles_in_flight_loses_nothing(isolated,
                                                                   tmp_path: Path) -> None:
    """Several devices publish fast; the bridge process is SIGKILLed while bundles are on
    their way to Kafka. A message is PUBACKed only once the bundle holding it is in Kafka, so
    Mosquitto redelivers the rest to the restarted bridge: every reading arrives."""
    from tests.bridge_support import Device, provision_devices, unique_device
    from tests.common_support import wait_until
    from tests.test_bridge_resilience import _start_bridge
    from vitalchain.ingest.bridge import forget_session

    cfg = isolated.with_overrides(flood_rate_per_second=1e9, flood_burst=10**9)
    names = [unique_device("kb") for _ in range(4)]
    devices = {d: Device(cfg, d, pw) for d, pw in provision_devices(cfg, names).items()}
    instance, group = random.randint(1000, 9999), f"kb-{names[0]}"
    log = tmp_path / "bridge.log"
    per_device = 300
    bridge = _start_bridge(cfg, instance, group, log)

    def readings_seen() -> Counter[tuple[str, int]]:
        return Counter((r["device_id"], r["seq"]) for *_x, v in _raw_records(cfg)
                       for r in record_readings(v))

    try:
        wait_until(lambda: "received=" in log.read_text(), 30, f"bridge running; log: {log}")
        sent = 0
        killed_at = None
        for m in range(per_device):
            for dev, device in devices.items():
                device.publish({"readings": [
                    {**_reading(dev, 2 * m + i)} for i in range(2)]})
                sent += 1
            if m == 100:
                wait_until(lambda: len(readings_seen()) >= 100, 30, "first readings forwarded")
                bridge.send_signal(signal.SIGKILL)
                bridge.wait(10)
                killed_at = len(readings_seen())
                bridge = _start_bridge(cfg, instance, group, log)
            time.sleep(0.001)
        for device in devices.values():
            device.wait_acked(60)
        want = {(dev, s) for dev in names for s in range(2 * per_device)}
        assert killed_at is not None and killed_at < len(want)
        wait_until(lambda: set(readings_seen()) == want, 90,
                   f"every reading after the restart (killed at {killed_at})")
        records = _raw_records(cfg)
        assert max(len(split_bundle(v)) for *_x, v in records) > 1, "nothing was bundled"
        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(30) == 0
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait(10)
        for device in devices.values():
            device.close()
        forget_session(cfg, instance)


def _reading(device: str, seq: int) -> dict[str, Any]:
    from tests.bridge_support import make_reading

    return make_reading(device, seq)


def _bundled(values: list[tuple[bytes, bytes]], partitions: int, per_bundle: int
             ) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value): ``values`` as the bridge bundles them, each partition's records
    (the partition its key maps to) in order, ``per_bundle`` at a time."""
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in values:
        by_partition.setdefault((murmur2(key) & 0x7FFFFFFF) % partitions, []).append((key, value))
    out = []
    for partition, items in sorted(by_partition.items()):
        for i in range(0, len(items), per_bundle):
            chunk = items[i:i + per_bundle]
            keys = {k for k, _ in chunk}
            out.append((partition, keys.pop() if len(keys) == 1 else b"",
                        encode_bundle([v for _, v in chunk])))
    return out


@pytest.mark.e2e
def test_sigkill_of_a_stream_worker_with_bundled_records_reproduces_the_same_windows(
        isolated, tmp_path: Path) -> None:
    """The stream's crash story with bundles of several devices' messages: a worker SIGKILLed
    mid-run (after writing readings, before sealing) and a second one finishing leave every
    reading sealed and stored exactly once, in the windows and roots of an uncrashed run."""
    from tests.stream_support import batched_values, make_input, producer
    from tests.test_stream_e2e import (
        assert_conflicts_lettered,
        assert_same_windows,
        crash_and_reference,
        stream_settings,
    )
    from vitalchain.app.stack.topology import ensure_database

    crash = stream_settings(isolated, tmp_path, "xc")
    reference = stream_settings(isolated, tmp_path, "xr")
    for s in (crash, reference):
        ensure_database(s)
    inp = make_input(devices=8, seconds=16)
    bundles = _bundled(batched_values(inp.records), crash.partitions, per_bundle=6)
    assert max(len(split_bundle(v)) for *_x, v in bundles) == 6
    prod = producer(crash)
    try:
        futures = [prod.send(crash.raw_topic, key=k, value=v, partition=p) for p, k, v in bundles]
        prod.flush(timeout=30)
        ends = {p: 0 for p in range(crash.partitions)}
        for future in futures:
            meta = future.get(timeout=30)
            ends[meta.partition] = max(ends[meta.partition], meta.offset + 1)
    finally:
        prod.close()
    crashed, clean = crash_and_reference(crash, reference, ends, inp, tmp_path, windows=2)
    assert_same_windows(crashed, clean, at_least=2)
    assert_conflicts_lettered(crash, inp, "messages[")  # named in its bundle
