"""Soak: the pipeline for N minutes while a fault script kills and restarts its parts at random.

    .venv/bin/python scripts/soak.py                       # 10 minutes, every fault (make soak)
    .venv/bin/python scripts/soak.py --minutes 2 --faults bridge,stream,anchor,mosquitto,anvil

A private stack (Mosquitto, tansu, InfluxDB, anvil) on free loopback ports in a temporary folder,
the anchor contract deployed, and the bridge, a stream worker and the anchoring worker run as the
same ``vitalchain ... run`` processes an operator starts. A fleet of wearables publishes for the
whole run; meanwhile, at random moments (``--seed`` makes them repeatable), one of these faults,
each once per round in a random order:

- ``bridge``, ``stream``, ``anchor``: SIGKILL the worker, restart it a moment later;
- ``mosquitto``, ``anvil``, ``kafka``: restart the service (tansu keeps topics in memory only, so a
  Kafka restart loses what it held; the bridge writes again what Kafka acknowledged in its replay
  horizon, docs/STREAM.md "Replays", and anything lost beyond it must be *reported* by the audit,
  never hidden).

At the end, checked from outside: every reading the broker acknowledged to a device is in InfluxDB
exactly once and sealed in the ledger, or (only with Kafka faults) named by the audit as lost in a
Kafka restart; none acknowledged after the last Kafka restart (after the old broker's process
exited) is missing; every checkpoint is anchored on chain; ``vitalchain audit`` over the run is
clean. Missing readings are counted by the Kafka restart they were acknowledged before.
The summary is printed as Markdown (docs/RELIABILITY.md keeps the latest). Exit 0 only if all hold.
``--keep DIR`` keeps the state folder (ledger, logs, ``missing.json``, and ``kafka.json``: every
record the last Kafka incarnation holds) for inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from vitalchain.anchor.deploy import deploy
from vitalchain.app.pipeline import Pipeline, wait_flowing
from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.app.stack.topology import ensure_topics
from vitalchain.config import Settings, load_settings, to_environ
from vitalchain.devices.fleet import FleetStats, run_fleet
from vitalchain.devices.registry import provision_devices
from vitalchain.storage.anchors import AnchorStore
from vitalchain.storage.influx import rows_of
from vitalchain.storage.ledger import Ledger

WORKERS = ("bridge", "stream", "anchor")
SERVICES = ("mosquitto", "anvil", "kafka")
ALL_FAULTS = WORKERS + SERVICES
STREAM_ARGS: list[str] = []  # --stream-loglevel adds "--loglevel <level>"


@dataclass
class Faults:
    """What the fault thread did, in order: (seconds since start, fault)."""

    done: list[tuple[float, str]] = field(default_factory=list)
    error: BaseException | None = None
    live: FleetStats | None = None  # the fleet's running stats (its acked ids grow as it runs)
    # Readings acknowledged to devices when each Kafka restart began: a reading acknowledged after
    # the last one that it missed must be stored whatever happened before.
    acked_at_kafka: list[set[tuple[str, int]]] = field(default_factory=list)

    def acked_now(self) -> set[tuple[str, int]]:
        """A copy of the fleet's acknowledged ids (another thread adds to them meanwhile)."""
        while True:
            try:
                return set(self.live.acked_ids) if self.live is not None else set()
            except RuntimeError:  # changed size during iteration
                continue

    def counts(self) -> Counter[str]:
        return Counter(name for _, name in self.done)


def soak_settings(folder: Path) -> Settings:
    mqtt, kafka, influx, eth, rpc, api = free_ports(6)
    return load_settings(environ={}, state_dir=folder, mqtt_port=mqtt, kafka_port=kafka, influx_port=influx,
                         eth_port=eth, influx_rpc_port=rpc, api_port=api, window_seconds=2.0,
                         idle_seal_seconds=1.0, anchor_interval_seconds=10.0, anchor_every_windows=50,
                         stream_app_id="vitalchain-soak")


def influx(settings: Settings, query: str) -> list[dict]:
    response = httpx.post(f"{settings.influx_url}/query", timeout=60,
                          data={"db": settings.influx_db, "q": query, "epoch": "ns"})
    response.raise_for_status()
    return rows_of(response.json())


def start_workers(pipeline: Pipeline) -> None:
    pipeline.start("bridge", None, "--progress-every", "5")
    pipeline.start("stream", None, "--progress-seconds", "5", *STREAM_ARGS)
    pipeline.start("anchor", None, "--quiet")


def inject(stack: Stack, pipeline: Pipeline, fault: str, rng: random.Random, record: Faults) -> None:
    if fault in WORKERS:
        pipeline.kill(fault)
        time.sleep(rng.uniform(0.5, 3.0))
        if fault == "bridge":
            pipeline.start("bridge", None, "--progress-every", "5")
        elif fault == "stream":
            pipeline.start("stream", None, "--progress-seconds", "5", *STREAM_ARGS)
        else:
            pipeline.start("anchor", None, "--quiet")
    elif fault == "kafka":
        # Taken once the broker is down (nothing is acknowledged then: the bridge waits for
        # Kafka): every reading acknowledged after this must be stored.
        stack.stop("kafka")
        record.acked_at_kafka.append(record.acked_now())
        stack.start("kafka")
        stack.wait_healthy("kafka", 60.0)
        ensure_topics(stack.settings)
    else:
        stack.restart(fault)


def fault_loop(stack: Stack, pipeline: Pipeline, faults: tuple[str, ...], stop: threading.Event,
               rng: random.Random, started: float, record: Faults, every: tuple[float, float]) -> None:
    try:
        queue: list[str] = []
        while not stop.wait(rng.uniform(*every)):
            if not queue:  # every fault once per round, in a random order: none is left out by chance
                queue = rng.sample(faults, len(faults))
            fault = queue.pop()
            inject(stack, pipeline, fault, rng, record)
            record.done.append((time.monotonic() - started, fault))
            print(f"[soak] {time.monotonic() - started:6.0f}s  fault: {fault}", flush=True)
    except BaseException as exc:  # reported by the main thread
        record.error = exc


def wait_sealed(settings: Settings, acked: set[tuple[str, int]], timeout: float,
                still_s: float = 60.0) -> set[tuple[str, int]]:
    """Wait until every acknowledged reading is sealed; return those still unsealed at the deadline,
    or once nothing more was sealed for ``still_s`` (after a Kafka restart some never will be)."""
    pending = set(acked)
    deadline = time.monotonic() + timeout
    last_change = time.monotonic()
    while pending and time.monotonic() < deadline and time.monotonic() - last_change < still_s:
        with Ledger(settings.ledger_target) as ledger:
            left = {key for key in pending if ledger.locate(*key) is None}
        if len(left) < len(pending):
            last_change = time.monotonic()
        pending = left
        if pending:
            time.sleep(2)
    return pending


def wait_anchored(settings: Settings, timeout: float) -> tuple[int, int]:
    """Wait until an anchored checkpoint covers the whole log; return (log size, anchored size)."""
    deadline = time.monotonic() + timeout
    size = covered = 0
    while time.monotonic() < deadline:
        with Ledger(settings.ledger_target) as ledger:
            size = ledger.log_size()
        with AnchorStore(settings.ledger_target) as store:
            latest = store.latest(settings.anchor_contract, "anchored")
        covered = latest.size if latest else 0
        if size and covered >= size:
            break
        time.sleep(2)
    return size, covered


def run_audit(settings: Settings, start_us: int, end_us: int, out: Path) -> tuple[int, dict]:
    env = dict(os.environ, **to_environ(settings))
    proc = subprocess.run([sys.executable, "-m", "vitalchain", "audit", "--from", str(start_us), "--to",
                           str(end_us), "--rpc", settings.eth_rpc_url, "--json", str(out), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text()) if out.exists() else {"stdout": proc.stdout, "stderr": proc.stderr}
    return proc.returncode, report


def dump_kafka(settings: Settings, out: Path) -> None:
    """Every record the current Kafka incarnation holds in the raw topic: (partition, offset,
    device, seq), for telling a reading Kafka never stored from one the stream skipped."""
    from kafka import KafkaConsumer, TopicPartition
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    parts = [TopicPartition(settings.raw_topic, p) for p in range(settings.partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    rows = []
    for message in consumer:
        try:
            body = json.loads(message.value)
            rows.append([message.partition, message.offset, body.get("device_id"), body.get("seq"),
                         message.timestamp])
        except ValueError:
            rows.append([message.partition, message.offset, None, None, message.timestamp])
    consumer.close()
    out.write_text(json.dumps(rows))


def audit_summary(audit: dict) -> str:
    """One line of the audit's JSON report: what was checked and how many findings of each kind."""
    counts = audit.get("counts")
    if not isinstance(counts, dict):
        return f"no report ({str(audit.get('stderr', ''))[-200:]!r})"
    found = {k: len(audit.get(k, [])) for k in ("readings", "windows", "checkpoints", "gaps", "lost")}
    return (f"{counts.get('windows_checked')} windows, {counts.get('readings_checked')} readings, "
            f"{counts.get('checkpoints_checked')} checkpoints checked (chain: {counts.get('chain_checked')}); "
            f"findings {found}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--rate", type=float, default=2.0, help="readings/s per device")
    parser.add_argument("--faults", default=",".join(ALL_FAULTS),
                        help=f"comma-separated subset of {','.join(ALL_FAULTS)}")
    parser.add_argument("--every", default="15,45", help="seconds between faults: MIN,MAX (uniform)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stream-loglevel", default=None,
                        help="the stream worker's log level (default: its own, warning)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="run in this new folder and keep it (ledger, logs) for inspection")
    args = parser.parse_args()
    faults = tuple(f for f in args.faults.split(",") if f)
    if args.stream_loglevel:
        STREAM_ARGS.extend(["--loglevel", args.stream_loglevel])
    unknown = set(faults) - set(ALL_FAULTS)
    if unknown or not faults:
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(ALL_FAULTS)}")
    every = tuple(float(x) for x in args.every.split(","))
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    print(f"[soak] {args.minutes:g} min, {args.devices} devices x {args.rate:g} Hz, faults {','.join(faults)}, "
          f"every {every[0]:g}-{every[1]:g} s, seed {seed}", flush=True)

    record = Faults()
    if args.keep is not None:
        args.keep.mkdir(parents=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep is not None
          else tempfile.TemporaryDirectory(prefix="vitalchain-soak-")) as folder:
        settings = soak_settings(Path(folder))
        stack = Stack(settings, log=lambda m: print(f"[stack] {m}", flush=True))
        stack.up()
        try:
            settings = settings.with_overrides(anchor_contract=deploy(settings).address)
            identities = provision_devices(settings, args.devices + 1, prefix="soak")
            probe, fleet = identities[0], identities[1:]
            with Pipeline(settings) as pipeline:
                start_workers(pipeline)
                wait_flowing(settings, probe, pipeline)
                start_us = time.time_ns() // 1000
                started = time.monotonic()
                stop = threading.Event()
                chaos = threading.Thread(target=fault_loop, name="faults", daemon=True,
                                         args=(stack, pipeline, faults, stop, rng, started, record, every))
                chaos.start()
                last_print = [-1e9]

                def progress(stats: FleetStats) -> None:
                    record.live = stats
                    if stats.elapsed_s - last_print[0] >= 30:
                        last_print[0] = stats.elapsed_s
                        print(f"[soak] fleet {stats.line()}", flush=True)

                stats = asyncio.run(run_fleet(settings, fleet, rate=args.rate, duration=args.minutes * 60,
                                              on_progress=progress, progress_interval=1.0,
                                              drain_timeout=120.0))
                stop.set()
                chaos.join(180)
                if record.error is not None:
                    raise RuntimeError(f"the fault thread failed: {record.error!r}") from record.error
                print(f"[soak] fleet done: {stats.line()}; waiting for the pipeline to drain", flush=True)
                for name in WORKERS:  # a worker killed by the last fault was restarted; all must live
                    if not pipeline.components[name].alive():
                        pipeline.start(name, None)
                unsealed = wait_sealed(settings, stats.acked_ids, timeout=300)
                log_size, anchored = wait_anchored(settings, timeout=240)
                end_us = time.time_ns() // 1000
                rows = influx(settings, "SELECT seq, device_id FROM readings WHERE device_id =~ /^soak-/")
                per_id = Counter((str(r["device_id"]), int(r["seq"])) for r in rows)
                audit_code, audit = run_audit(settings, start_us - 60_000_000, end_us,
                                              Path(folder) / "audit.json")
                if args.keep is not None:
                    dump_kafka(settings, args.keep / "kafka.json")
        finally:
            stack.down()

    fleet_ids = {(d, s) for d, s in stats.acked_ids if d != probe.device_id}
    doubled = sum(1 for n in per_id.values() if n > 1)
    missing = fleet_ids - per_id.keys()
    # Readings Kafka lost in a restart: the audit names them by device and seq range ("lost").
    lost_reported = {(str(f["device_id"]), seq) for f in audit.get("lost", [])
                     for seq in range(int(f["first_missing"]), int(f["last_missing"]) + 1)}
    unexplained = (missing | unsealed) - lost_reported
    # Which Kafka restart each missing reading predates (index into the restarts; past the end:
    # acknowledged after the last restart, which nothing may lose).
    def restart_of(key: tuple[str, int]) -> int:
        return next((i for i, before in enumerate(record.acked_at_kafka) if key in before),
                    len(record.acked_at_kafka))
    missing_by_restart = Counter(restart_of(k) for k in missing | unsealed)
    after_last = missing_by_restart.get(len(record.acked_at_kafka), 0)
    if args.keep is not None:
        (args.keep / "missing.json").write_text(json.dumps(
            {"restarts": [t for t, f in record.done if f == "kafka"],
             "missing": sorted([d, q, restart_of((d, q)), (d, q) in lost_reported]
                               for d, q in missing | unsealed)}))
    kafka_restarts = record.counts().get("kafka", 0)
    tampering = any(audit.get(kind) for kind in ("readings", "windows", "checkpoints"))
    # exit 0: clean; with losses in a Kafka restart the audit says INCOMPLETE (exit 1) and nothing else
    audit_ok = audit_code == 0 or (audit_code == 1 and not tampering and bool(audit.get("lost"))
                                   and kafka_restarts > 0)
    ok = (not doubled and not unexplained and anchored >= log_size > 0 and audit_ok
          and stats.dropped == 0 and (not missing or kafka_restarts > 0) and after_last == 0)
    counts = record.counts()
    print(f"""
## Soak {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {'PASS' if ok else 'FAIL'}

`.venv/bin/python scripts/soak.py --minutes {args.minutes:g} --devices {args.devices} --rate {args.rate:g} \
--faults {','.join(faults)} --every {args.every} --seed {seed}`

| | |
| --- | --- |
| faults injected | {len(record.done)}: {', '.join(f'{n} x{counts[n]}' for n in faults if counts[n])} |
| readings acknowledged to devices | {len(fleet_ids)} (dropped by devices: {stats.dropped}) |
| in InfluxDB exactly once | {len(fleet_ids) - len(missing)} ({doubled} stored twice, {len(missing)} missing) |
| sealed in the ledger | {len(fleet_ids) - len(unsealed)} ({len(unsealed)} unsealed) |
| missing and reported by the audit as lost in a Kafka restart | {len(lost_reported & missing)} \
(Kafka restarts: {kafka_restarts}) |
| missing, by the Kafka restart they were acknowledged before | \
{', '.join(f'#{i + 1}: {n}' for i, n in sorted(missing_by_restart.items()) if i < kafka_restarts) or 'none'}; \
after the last restart: {after_last} |
| missing and unexplained | {len(unexplained)} |
| windows in the log / covered by an anchored checkpoint | {log_size} / {anchored} |
| `vitalchain audit --rpc` over the run | exit {audit_code}: {audit_summary(audit)} |
""", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
