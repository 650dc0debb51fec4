"""Shared pieces of the stream tests: input generation, worker processes, checking the result."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from vitalchain.config import Settings
from vitalchain.core.integrity import reading_leaf_hash, root
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.readings import reading_from_row

SECOND = 1_000_000
T0 = 1_750_000_000 * SECOND


def reading(device: str, seq: int, ts_us: int, hr: int = 70) -> dict[str, Any]:
    return {"device_id": device, "patient_id": f"pat-{device}", "seq": seq, "ts_us": ts_us,
            "vitals": {"hr": hr, "spo2": 97, "rr": 14, "temp_c": 36.6 + seq % 7 / 10,
                       "sys": 120, "dia": 80}}


@dataclasses.dataclass
class Input:
    """Records to produce (in order) and what the stream must end up with."""

    records: list[dict[str, Any]]
    unique: dict[tuple[str, int], dict[str, Any]]
    duplicates: int = 0
    conflicts: int = 0
    late: set[tuple[str, int]] = dataclasses.field(default_factory=set)


def make_input(devices: int, seconds: float, period_s: float = 0.2) -> Input:
    """Readings of ``devices`` devices over ``seconds`` of event time, plus duplicates, seq
    conflicts and late readings sprinkled in deterministically."""
    records: list[dict[str, Any]] = []
    unique: dict[tuple[str, int], dict[str, Any]] = {}
    inp = Input(records, unique)
    steps = int(seconds / period_s)
    for step in range(steps):
        for d in range(devices):
            device = f"dev{d}"
            r = reading(device, step, T0 + int(step * period_s * SECOND) + d * 10)
            records.append(r)
            unique[(device, step)] = r
            if step % 17 == 5 and d == 1:  # exact resend: dropped as duplicate
                records.append(dict(r))
                inp.duplicates += 1
            if step % 23 == 7 and d == 2:  # same seq, other content: dead-lettered
                records.append(reading(device, step - 3, r["ts_us"], hr=150))
                inp.conflicts += 1
    for d in range(devices):  # late: old timestamps arriving at the end, new sequence numbers
        device = f"dev{d}"
        r = reading(device, 100_000 + d, T0 + SECOND // 2)
        records.append(r)
        unique[(device, r["seq"])] = r
        inp.late.add((device, r["seq"]))
    return inp


def producer(settings: Settings):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                         enable_idempotence=False, linger_ms=5)


def produce(settings: Settings, records: list[dict[str, Any]], received_us: int = 1,
            pause_every: int = 0, pause_s: float = 0.0) -> dict[int, int]:
    """Produce ``records`` in order, one version-1 record each (the bridge's format before
    record version 2); returns each partition's end offset (last offset + 1)."""
    values = [(r["device_id"].encode(), json.dumps({**r, "received_us": received_us}).encode())
              for r in records]
    return produce_values(settings, values, pause_every, pause_s)


def batched_values(records: list[dict[str, Any]], received_us: int = 1,
                   span_s: float = 1.0) -> list[tuple[bytes, bytes]]:
    """``records`` as the bridge writes them since record version 2: one record per device
    message, here every reading of a device within each ``span_s`` of event time (resends and
    conflicts with the reading they follow), in time order; a reading with seq >= 100,000 (the
    late ones of :func:`make_input`) alone, at the end.  (key, value) pairs."""
    from vitalchain.core.payload.record import encode

    span = round(span_s * SECOND)
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    late: list[dict[str, Any]] = []
    for r in records:
        if r["seq"] >= 100_000:
            late.append(r)
        else:
            groups[((r["ts_us"] - T0) // span, r["device_id"])].append(r)
    out = [(device.encode(), encode(group, received_us))
           for (_, device), group in sorted(groups.items())]
    return out + [(r["device_id"].encode(), encode([r], received_us)) for r in late]


def produce_values(settings: Settings, values: list[tuple[bytes, bytes]], pause_every: int = 0,
                   pause_s: float = 0.0) -> dict[int, int]:
    """Produce (key, value) pairs in order (a flush and a pause of ``pause_s`` after every
    ``pause_every``); returns each partition's end offset (last offset + 1).

    Taken from the broker's acks: tansu's ListOffsets answer is not reliable.
    """
    prod = producer(settings)
    ends: dict[int, int] = {p: 0 for p in range(settings.partitions)}
    try:
        futures = []
        for i, (key, value) in enumerate(values, 1):
            futures.append(prod.send(settings.raw_topic, key=key, value=value))
            if pause_every and i % pause_every == 0:
                prod.flush(timeout=30)
                time.sleep(pause_s)
        prod.flush(timeout=30)
        for future in futures:
            meta = future.get(timeout=30)
            ends[meta.partition] = max(ends[meta.partition], meta.offset + 1)
        return ends
    finally:
        prod.close()


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCHAIN_")}
    for f in dataclasses.fields(settings):
        env[f"VITALCHAIN_{f.name.upper()}"] = str(getattr(settings, f.name))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Worker:
    """One ``vitalchain stream run`` process; killed (whole group) when the test ends."""

    def __init__(self, settings: Settings, name: str, log_dir: Path) -> None:
        self.log_path = log_dir / f"worker-{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from vitalchain.app.cli import main; main()", "stream", "run",
             "--worker-name", name, "--progress-seconds", "1"],
            env=settings_env(settings), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:  # a reaped pid may already belong to another process
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-25:])


def all_done(settings: Settings, highwaters: dict[int, int]) -> bool:
    """Every partition sealed up to its last record (windows or duplicate-only ranges)."""
    ledger = Ledger(settings.ledger_target)
    try:
        return all(n == 0 or ledger.last_sealed_offset(settings.raw_topic, p) == n - 1
                   for p, n in highwaters.items())
    finally:
        ledger.close()


def influx_rows(settings: Settings, q: str) -> list[dict[str, Any]]:
    from vitalchain.storage.influx import rows_of

    response = httpx.post(f"{settings.influx_url}/query",
                          data={"q": q, "db": settings.influx_db, "epoch": "ns"}, timeout=30)
    response.raise_for_status()
    return rows_of(response.json())


def check_sealed(settings: Settings, inp: Input,
                 received_unsealed: frozenset[tuple[str, int]] = frozenset()) -> dict[str, dict[str, Any]]:
    """Assert the exactly-once and integrity guarantees; return window headers by id.

    ``received_unsealed``: readings stored on receipt whose records Kafka lost before they were
    sealed (a broker restart); stored once, sealed nowhere, and left to the audit.
    """
    rows = influx_rows(settings, "SELECT * FROM readings")
    stored = [reading_from_row(r) for r in rows]
    ids = [(s.canonical["device_id"], s.canonical["seq"]) for s in stored]
    assert len(ids) == len(set(ids)), "a reading is stored twice"
    assert not received_unsealed & set(inp.unique)
    stored = [s for s in stored
              if (s.canonical["device_id"], s.canonical["seq"]) not in received_unsealed]
    ids = [(s.canonical["device_id"], s.canonical["seq"]) for s in stored]
    assert set(ids) == set(inp.unique), (
        f"missing {sorted(set(inp.unique) - set(ids))[:5]}, extra {sorted(set(ids) - set(inp.unique))[:5]}")
    for s in stored:
        original = inp.unique[(s.canonical["device_id"], s.canonical["seq"])]
        assert {k: s.canonical[k] for k in original} == original
        assert s.leaf_hex is None  # D39: no leaf stored; each is compared with the ledger's below
        assert s.late == ((s.canonical["device_id"], s.canonical["seq"]) in inp.late)
    ledger = Ledger(settings.ledger_target)
    try:
        assert ledger.reading_count() == len(inp.unique)
        by_window: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        for s in stored:
            loc = ledger.locate(s.canonical["device_id"], s.canonical["seq"])
            assert loc is not None and loc.window_id == s.window_id
            by_window[s.window_id].append((loc.index_in_window, reading_leaf_hash(s.canonical)))
        headers: dict[str, dict[str, Any]] = {}
        windows = list(ledger.windows(topic=settings.raw_topic))
        assert [w.log_index for w in windows] == list(range(len(windows)))
        for w in windows:
            leaves = [leaf for _, leaf in sorted(by_window.pop(w.window_id))]
            assert len(leaves) == w.header["size"]
            assert root(leaves).hex() == w.header["root"], f"root of {w.window_id} differs"
            headers[w.window_id] = {**w.header, "idle_cut": w.idle_cut}
        assert not by_window, f"readings in unknown windows {list(by_window)[:3]}"
        points = influx_rows(settings, "SELECT * FROM windows")
        assert {p["window_id"]: p["root"] for p in points} == {
            k: h["root"] for k, h in headers.items()}
        assert sum(h["late"] for h in headers.values()) == len(inp.late)
        return headers
    finally:
        ledger.close()


def dead_letters(settings: Settings, expected: int, timeout_s: float = 10) -> list[dict]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(settings.dlq_topic, bootstrap_servers=settings.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=int(timeout_s * 1000))
    try:
        out = []
        for message in consumer:
            out.append(json.loads(message.value))
            if len(out) >= expected:
                break
        return out
    finally:
        consumer.close()
