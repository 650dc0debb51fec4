"""End-to-end throughput and latency of the pipeline, next to the simulator's raw rate.

    .venv/bin/python bench/bench_pipeline.py                          # 10,100,500 devices, 2 Hz, 20 s
    .venv/bin/python bench/bench_pipeline.py --devices 10,100 --seconds 10 --rate 5
    .venv/bin/python bench/bench_pipeline.py --devices 1000 --rate 5 --batch 10 --workers 2
    .venv/bin/python bench/bench_pipeline.py --ledger postgresql      # the ledger on PostgreSQL

Starts a private stack (Mosquitto, Kafka, InfluxDB) on free loopback ports in a temporary folder
and tears it down at the end. For each device count, in the same run:

- **raw**: the fleet against Mosquitto alone (no bridge has ever subscribed, so the broker acks and
  discards): readings acknowledged per second. This is the ceiling the simulator reaches here.
- **ceiling**: the largest fleet at ``--ceiling-rate`` per device against Mosquitto alone: the most
  the simulator and broker do here, against which the best pipeline rate is also put.
- **pipeline**: the same fleet through bridge → Kafka → stream worker → InfluxDB + ledger (the
  ``vitalchain bridge run`` / ``stream run`` processes an operator starts): readings *sealed and
  stored* per second, from the fleet's start to the moment the last of its readings was queryable.

Latency to *queryable* is what a clinician sees: from the device's sample time (``ts_us``, taken
just before the PUBLISH on the same clock) to the moment the reading was first returned by the
clinician API (``GET /clinician/patients``, the ``vitalchain api`` process an operator starts),
polled every ``--poll-seconds`` (0.2 s) by a clinician granted ``--api-sample`` of the fleet's
patients (polling every patient of a large fleet would load the box being measured).  A device's
readings are returned in order, so when the API's latest reading of a device is seq N, every
sample of that device up to N counts as queryable then.  Resolution: the poll interval plus one
request, so each reading's instant is bracketed: it was queryable by the response that first
showed it (the *upper* bound, the q columns) and not yet when the previous answered request was
sent (the *lower* bound).  Both bounds' p50 and p99 are printed; the true percentile lies between
them, and a finer ``--poll-seconds`` narrows the bracket (at the cost of more load on the API and
InfluxDB, which the row's CPU figures then include).

A second latency, to *sealed*, is taken from the ledger (a poller notes when each window first
appears in the log); a row is drained when every acknowledged reading is sealed and its window's
``windows`` point is in InfluxDB. ``--batch`` readings go in one MQTT message; ``--workers`` stream worker
processes share the partitions. ``--ledger postgresql`` puts the ledger on a private PostgreSQL
server the stack starts (``VITALCHAIN_LEDGER_URL`` on 127.0.0.1) instead of the SQLite file.

CPU: for every process of the pipeline (simulator = this process's fleet thread; Mosquitto, Kafka,
InfluxDB = the stack's services; bridge and stream = their process groups, children included), the
user+system seconds read from ``/proc`` before and after the row, per 1,000 readings stored. The
machine is shared and noisy: these per-reading figures, and ratios taken in one run, are what to
compare, never a wall-clock rate alone.

Steady span: the whole-run figures above include connecting every device (a cost per device, not
per reading), the ramp and the drain's tail, and the end-to-end rate counts from before the first
device connects to the last reading queryable, so it stays below the offered rate however fast the
pipeline is. Each row therefore also prints a span inside the run (``SteadySpan``: 99 % of the devices
connected, from a fifth to nine tenths of the run): readings acknowledged and readings sealed and
stored per second in it (the rate the box sustains: offer more than the pipeline takes to see its
limit), and CPU per reading by process over the same span.

Every row also checks exactly once: each acknowledged reading is sealed in the ledger, and InfluxDB
holds as many points for the fleet as the ledger holds sealed readings (one row per device and seq),
so nothing is stored twice or stored unsealed. Readings a device published but had not seen
acknowledged when the fleet stopped (a loaded Mosquitto's PUBACKs after the fleet's drain) arrive
too; they are counted apart (``published unacknowledged``), never as doubles. A row whose readings
do not all arrive within ``--drain-timeout`` is reported as incomplete and ends the run.
All processes share this machine's cores, so the ratio is what one box sustains, not a cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from vitalchain.app.pipeline import Pipeline, wait_flowing
from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import ConfigError, Settings, load_settings
from vitalchain.devices.fleet import FleetStats, run_fleet
from vitalchain.devices.registry import DeviceIdentity, provision_devices
from vitalchain.storage.apistore import ApiStore
from vitalchain.storage.influx import rows_of
from vitalchain.storage.ledger import Ledger

POLL_S = 0.2
POLL_PROBE_S = 5.0  # influxd's CPU with only the pollers running, measured after each row
API_USER = "bench-clinician"
SERVICES = ("mosquitto", "kafka", "influxdb")
CPU_COLUMNS = ("simulator", "mosquitto", "bridge", "kafka", "stream", "influxdb", "postgres")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def p99(ordered: list[float]) -> float:
    """The 99th percentile of a sorted, non-empty list (nearest rank), as every row reports it."""
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def group_cpu_seconds(leader: int) -> float:
    """user+system seconds of every live process in ``leader``'s process group, plus what their
    reaped children used (``cutime``/``cstime``); 0 for a group that is gone."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == leader:  # field 5 of stat: pgrp (fields here start at field 3)
            total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total / CLOCK_TICKS


def cpu_snapshot(stack: Stack, pipeline: Pipeline) -> dict[str, float]:
    snap = {name: group_cpu_seconds(pid) for name in (*SERVICES, "postgres")
            if (pid := stack.pid(name)) is not None}
    for name in ("bridge", "stream"):
        snap[name] = group_cpu_seconds(pipeline.components[name].process.pid)
    return snap


@dataclass
class Row:
    devices: int
    rate: float
    batch: int = 1
    workers: int = 1
    raw_rate: float = 0.0
    acked: int = 0
    stored: int = 0
    sealed: int = 0  # the fleet's readings in the ledger (acked + published unacked at the stop)
    pipeline_rate: float = 0.0
    p50: float = float("nan")
    p99: float = float("nan")
    worst: float = float("nan")
    drain_s: float = float("nan")
    sealed_p50: float = float("nan")
    sealed_p99: float = float("nan")
    sealed_max: float = float("nan")
    cpu_ms_per_1k: dict[str, float] = field(default_factory=dict)
    api_sampled: int = 0  # readings whose queryable latency was measured through the API
    api_request_p50: float = float("nan")  # one GET /clinician/patients, seconds
    # The same percentiles from each reading's lower bound: sent before the previous answered
    # request that did not show it, so the true percentile lies in [lower, upper].
    p50_lower: float = float("nan")
    p99_lower: float = float("nan")
    stored_p99_lower: float = float("nan")
    bridge_p50: float = float("nan")  # sample -> the bridge's received_us, sampled devices
    bridge_p99: float = float("nan")
    stored_p50: float = float("nan")  # sample -> in InfluxDB (polled), sampled devices
    stored_p99: float = float("nan")
    complete: bool = False
    note: str = ""
    # influxd's CPU while only the bench's pollers run (after the drain), ms per second, and the
    # seconds the row's CPU figures span: their product is the polling's share of the InfluxDB
    # column (the clinician API's poll every 0.2 s, the window poller, the stored-seq poll).
    influx_poll_ms_s: float = float("nan")
    cpu_span_s: float = float("nan")
    # The steady span (SteadySpan): 99 % of the devices connected, the fleet still sampling. What the
    # row's whole-run figures mix in (connecting every device, the ramp, the drain's tail) is
    # left out, so these say what the box sustains and what a reading costs once running.
    steady_s: float = float("nan")
    steady_counts: tuple[int, int] = (0, 0)  # readings acknowledged, sealed and stored in the span
    steady_missing: str = ""  # why a row has no steady span
    steady_acked_rate: float = float("nan")
    steady_stored_rate: float = float("nan")
    steady_cpu_ms_per_1k: dict[str, float] = field(default_factory=dict)


@dataclass
class SpanMark:
    t: float  # wall clock, as the window poller stamps
    elapsed_s: float  # into the fleet's run
    acked: int
    sim_cpu: float  # the fleet thread's CPU seconds
    cpu: dict[str, float]  # cpu_snapshot()


class SteadySpan:
    """Two marks taken from the fleet's own progress callback (so in its thread, once a second):
    the first once 99 % of the devices are connected and at least a fifth of the run has passed, the
    second at nine tenths of the run, while the fleet still samples.

    Between them the simulator's and Mosquitto's CPU is divided by the readings acknowledged, and
    the pipeline's processes' by the readings of the windows that became visible in InfluxDB
    (sealed and stored), which is also the steady stored rate. Where the pipeline falls behind,
    a stage ahead of the slowest (the bridge, say) is charged for fewer readings than it handled:
    its figure is then an upper bound, never flattering.
    """

    def __init__(self, stack: Stack, pipeline: Pipeline, seconds: float) -> None:
        self.stack, self.pipeline, self.seconds = stack, pipeline, seconds
        self.start_after = max(5.0, 0.2 * seconds)
        self.end_at = 0.9 * seconds
        self.first: SpanMark | None = None
        self.last: SpanMark | None = None
        self.most_connected = (0, 0.0)  # the most devices seen connected, and when
        self.trace: list[tuple[float, int]] = []  # (elapsed s, devices connected) per callback

    def on_progress(self, stats: FleetStats) -> None:
        if stats.elapsed_s >= self.seconds:  # sampling is over: the drain is not steady
            return
        self.trace.append((stats.elapsed_s, stats.connected))
        if stats.connected > self.most_connected[0]:
            self.most_connected = (stats.connected, stats.elapsed_s)
        if self.first is None:
            # 99 %: with thousands of devices on a loaded box a few are always reconnecting
            # (their reconnects are then part of the steady cost, as they would be in a ward).
            if stats.connected >= 0.99 * stats.devices and stats.elapsed_s >= self.start_after:
                self.first = self._mark(stats)
        elif self.last is None and stats.elapsed_s >= self.end_at:
            self.last = self._mark(stats)

    def _mark(self, stats: FleetStats) -> SpanMark:
        return SpanMark(time.time(), stats.elapsed_s, stats.acked, time.thread_time(),
                        cpu_snapshot(self.stack, self.pipeline))

    def fill(self, row: Row, poller: WindowPoller) -> None:
        first, last = self.first, self.last
        if first is None or last is None or last.t <= first.t:
            most, at = self.most_connected
            row.steady_missing = (f"no steady span: at most {most} of {row.devices} devices "
                                  f"connected at once (first at {at:.0f} s), the span needs 99 % "
                                  f"from {self.start_after:.0f} s to {self.end_at:.0f} s; connected "
                                  "at each progress call: "
                                  + ", ".join(f"{n}@{t:.0f}s" for t, n in self.trace[::5]))
            return
        span = last.t - first.t
        acked = last.acked - first.acked
        stored = poller.readings_seen_between(first.t, last.t)
        row.steady_s = span
        row.steady_counts = (acked, stored)
        row.steady_acked_rate = acked / span
        row.steady_stored_rate = stored / span
        per_acked = 1e6 / acked if acked else float("nan")
        per_stored = 1e6 / stored if stored else float("nan")
        row.steady_cpu_ms_per_1k = {"simulator": (last.sim_cpu - first.sim_cpu) * per_acked}
        for name, after in last.cpu.items():
            per = per_acked if name == "mosquitto" else per_stored
            row.steady_cpu_ms_per_1k[name] = (after - first.cpu.get(name, 0.0)) * per


def influx_query(settings: Settings, query: str) -> list[dict]:
    response = httpx.post(f"{settings.influx_url}/query", timeout=30,
                          data={"db": settings.influx_db, "q": query, "epoch": "ns"})
    response.raise_for_status()
    return rows_of(response.json())


class WindowPoller:
    """Records when each sealed window first became visible in InfluxDB (wall clock).

    It asks InfluxDB only about the windows the ledger has sealed and InfluxDB has not yet shown,
    by their ``window_id`` tag: the poll is an instrument, and a scan of the whole ``windows``
    measurement every 0.2 s grew with the run and was charged to influxd's column (about a third
    of the bench's polling share, docs/PERFORMANCE.md, "influx3"). A window counts as seen once it
    is in both, which is also what a row's drain waits for.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: dict[str, float] = {}
        self.sizes: dict[str, int] = {}  # readings per window, for the steady span's rate
        self._pending: dict[str, int] = {}  # sealed in the ledger, not yet seen in InfluxDB
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="window-poller", daemon=True)

    def _run(self) -> None:
        next_index = 0
        with Ledger(self.settings.ledger_target) as ledger:
            while not self._stop.is_set():
                size = ledger.log_size()
                while next_index < size:
                    window = ledger.window_by_index(next_index)
                    if window is not None:
                        self._pending[window.window_id] = int(window.header["size"])
                    next_index += 1
                if self._pending:
                    names = "|".join(sorted(self._pending))
                    try:
                        rows = influx_query(self.settings, "SELECT size, window_id FROM windows "
                                            f"WHERE window_id =~ /^({names})$/")
                    except (httpx.HTTPError, ValueError):
                        rows = []
                    now = time.time()
                    with self._lock:
                        for row in rows:
                            window_id = str(row["window_id"])
                            if window_id in self._pending and window_id not in self.seen:
                                self.seen[window_id] = now
                                self.sizes[window_id] = self._pending.pop(window_id)
                self._stop.wait(POLL_S)

    def first_seen(self, window_id: str) -> float | None:
        with self._lock:
            return self.seen.get(window_id)

    def readings_seen_between(self, t0: float, t1: float) -> int:
        """Readings of the windows that first became visible in InfluxDB within [t0, t1)."""
        with self._lock:
            return sum(self.sizes.get(w, 0) for w, t in self.seen.items() if t0 <= t < t1)

    def __enter__(self) -> WindowPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class SealPoller:
    """Records when each window first appeared in the ledger's log (wall clock)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seal-poller", daemon=True)

    def _run(self) -> None:
        next_index = 0
        with Ledger(self.settings.ledger_target) as ledger:
            while not self._stop.is_set():
                size = ledger.log_size()
                now = time.time()
                while next_index < size:
                    window = ledger.window_by_index(next_index)
                    if window is not None:
                        with self._lock:
                            self.seen.setdefault(window.window_id, now)
                    next_index += 1
                self._stop.wait(POLL_S)

    def first_seen(self, window_id: str) -> float | None:
        with self._lock:
            return self.seen.get(window_id)

    def __enter__(self) -> SealPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


class ApiPoller:
    """When each sampled reading was first returned by the clinician API (wall clock).

    ``seen[device]`` lists ``(seq, t, before)``: the API's latest seq of the device first seen in
    the answer received at ``t``, so a reading ``(device, s)`` was queryable by the first ``t``
    whose seq is ``>= s``; and it was not yet queryable when the previous answered request was
    sent, at ``before`` (that answer's latest seq was lower, or the device had none).
    """

    def __init__(self, settings: Settings, base_url: str, token: str,
                 interval_s: float = POLL_S) -> None:
        self.settings = settings
        self.base_url = base_url
        self.token = token
        self.interval_s = interval_s
        self.seen: dict[str, list[tuple[int, float, float]]] = {}
        self.stored: dict[str, list[tuple[int, float, float]]] = {}  # the same, from InfluxDB
        self.devices: list[str] = []  # sampled devices, for the InfluxDB side
        self.requests = 0
        self.request_s: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Two threads: the API's answers are bracketed by its own requests only, however long
        # the InfluxDB query of the other takes.
        self._threads = [threading.Thread(target=self._run_api, name="api-poller", daemon=True),
                         threading.Thread(target=self._run_stored, name="stored-poller",
                                          daemon=True)]

    def _run_api(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30,
                          headers={"Authorization": f"Bearer {self.token}"}) as client:
            before = time.time()  # nothing sampled was queryable before the poller started
            while not self._stop.is_set():
                began = time.time()
                try:
                    response = client.get("/clinician/patients")
                    patients = response.json()["patients"] if response.status_code == 200 else None
                except (httpx.HTTPError, ValueError, KeyError):
                    patients = None
                now = time.time()
                self.requests += 1
                self.request_s.append(now - began)
                if patients is not None:
                    with self._lock:
                        for patient in patients:
                            latest = patient.get("latest")
                            if latest:
                                self._mark(self.seen, latest["device_id"], int(latest["seq"]),
                                           now, before)
                    before = began
                self._stop.wait(self.interval_s)

    def _run_stored(self) -> None:
        before = time.time()
        while not self._stop.is_set():
            began = time.time()
            stored = self._stored_now()
            now = time.time()
            if stored is not None:
                with self._lock:
                    for device, seq in stored.items():
                        self._mark(self.stored, device, seq, now, before)
                before = began
            self._stop.wait(self.interval_s)

    def _stored_now(self) -> dict[str, int] | None:
        """Newest seq in InfluxDB of each sampled device (one query), None if the query failed:
        where the stream's part ends and the API's begins."""
        if not self.devices:
            return {}
        names = "|".join(self.devices)
        try:
            rows = influx_query(self.settings, "SELECT last(seq) AS seq FROM readings WHERE "
                                f"device_id =~ /^({names})$/ AND time > now() - 300s "
                                "GROUP BY device_id")
        except (httpx.HTTPError, ValueError):
            return None
        return {str(r["device_id"]): int(r["seq"]) for r in rows if r.get("seq") is not None}

    @staticmethod
    def _mark(marks: dict[str, list[tuple[int, float, float]]], device: str, seq: int, t: float,
              before: float) -> None:
        mine = marks.setdefault(device, [])
        if not mine or seq > mine[-1][0]:
            mine.append((seq, t, before))

    def queryable_between(self, device_id: str, seq: int,
                          source: str = "api") -> tuple[float, float] | None:
        """(not yet queryable at, queryable by) for reading ``seq`` of ``device_id``; None while
        no answer has shown it."""
        with self._lock:
            for top, t, before in (self.seen if source == "api" else self.stored).get(device_id, ()):
                if top >= seq:
                    return before, t
        return None

    def __enter__(self) -> ApiPoller:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


def grant_sample(settings: Settings, fleets: dict[int, list[DeviceIdentity]], sample: int) -> str:
    """A clinician granted the patients of the first ``sample`` devices of every fleet; its token."""
    from vitalchain.api.app import api_path

    store = ApiStore(api_path(settings))
    try:
        token = store.add_user(API_USER, "clinician")
        until = time.time_ns() // 1000 + 24 * 3600 * 1_000_000
        for identities in fleets.values():
            for identity in identities[:sample]:
                store.add_grant(identity.patient_id, API_USER, until, "bench")
    finally:
        store.close()
    return token


def bench_settings(folder: Path, window_seconds: float, idle_seal_seconds: float,
                   ledger: str = "sqlite", unsigned: bool = False,
                   receipt_flush_seconds: float = Settings.receipt_flush_seconds,
                   fetch_wait_ms: int = Settings.kafka_fetch_wait_ms) -> Settings:
    mqtt, kafka, influx, eth, rpc, pg, api = free_ports(7)
    url = f"postgresql://vitalchain@127.0.0.1:{pg}/ledger" if ledger == "postgresql" else ""
    return load_settings(environ={}, state_dir=folder, mqtt_port=mqtt, kafka_port=kafka,
                         influx_port=influx, eth_port=eth, influx_rpc_port=rpc, api_port=api,
                         window_seconds=window_seconds, idle_seal_seconds=idle_seal_seconds,
                         stream_app_id="vitalchain-bench", ledger_url=url,
                         device_signatures="optional" if unsigned else "required",
                         receipt_flush_seconds=receipt_flush_seconds,
                         kafka_fetch_wait_ms=fetch_wait_ms)


def _unsigned(identities: list[DeviceIdentity]) -> list[DeviceIdentity]:
    """The same devices without their keys: they publish unsigned (the A of an A/B on signatures)."""
    return [dataclasses.replace(i, signing=None) for i in identities]


def run_raw(settings: Settings, identities: list[DeviceIdentity], rate: float, seconds: float,
            batch: int = 1) -> float:
    stats = asyncio.run(run_fleet(settings, identities, rate=rate, duration=seconds, track_acked=False,
                                  batch=batch))
    return stats.acked / stats.elapsed_s if stats.elapsed_s else 0.0


def last_progress(pipeline: Pipeline, name: str, marker: str) -> str:
    """The component's latest progress line (cumulative counters), to see where a backlog sits."""
    lines = pipeline.components[name].log.read_text(errors="replace").splitlines()
    return next((line.strip() for line in reversed(lines) if marker in line), "(none yet)")


def run_pipeline_row(settings: Settings, stack: Stack, pipeline: Pipeline, poller: WindowPoller,
                     sealer: SealPoller, api: ApiPoller, row: Row, identities: list[DeviceIdentity],
                     seconds: float, drain_timeout: float, sample: int) -> None:
    api.devices = [identity.device_id for identity in identities[:sample]]
    cpu_before = cpu_snapshot(stack, pipeline)
    started = time.time()
    sim_before = time.thread_time()
    span = SteadySpan(stack, pipeline, seconds)
    stats = asyncio.run(run_fleet(settings, identities, rate=row.rate, duration=seconds, batch=row.batch,
                                  on_progress=span.on_progress))
    sim_cpu = time.thread_time() - sim_before
    published_end = time.time()
    print(f"  publishing done ({stats.acked} acked); cumulative counters now:\n"
          f"    {last_progress(pipeline, 'bridge', 'forwarded=')}\n"
          f"    {last_progress(pipeline, 'stream', 'sealed_readings=')}", flush=True)
    row.acked = len(stats.acked_ids)
    pending = set(stats.acked_ids)
    located: dict[tuple[str, int], tuple[str, int]] = {}  # (device, seq) -> (window_id, ts_us)
    deadline = time.monotonic() + drain_timeout
    with Ledger(settings.ledger_target) as ledger:
        while True:
            pipeline.check_alive()
            for key in list(pending):
                where = ledger.locate(*key)
                if where is not None and poller.first_seen(where.window_id) is not None:
                    located[key] = (where.window_id, where.ts_us)
                    pending.discard(key)
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    cpu_after = cpu_snapshot(stack, pipeline)
    row.cpu_span_s = time.time() - started
    span.fill(row, poller)
    poll_before, poll_t0 = group_cpu_seconds(stack.pid("influxdb") or 0), time.time()
    time.sleep(POLL_PROBE_S)  # the pipeline is idle: what influxd spends now is the pollers'
    row.influx_poll_ms_s = ((group_cpu_seconds(stack.pid("influxdb") or 0)
                             - poll_before) / (time.time() - poll_t0) * 1000)
    prefix = identities[0].device_id.rsplit("-", 1)[0]
    counts = influx_query(settings, f"SELECT count(seq) FROM readings WHERE device_id =~ /^{prefix}-/")
    row.stored = int(counts[0]["count"]) if counts else 0
    if row.stored:
        per_1k = 1000.0 / row.stored
        row.cpu_ms_per_1k = {"simulator": sim_cpu * per_1k * 1000}
        for name in cpu_after:
            row.cpu_ms_per_1k[name] = (cpu_after[name] - cpu_before.get(name, 0.0)) * per_1k * 1000
    # Every reading a device saw acknowledged is sealed (pending), and every point InfluxDB holds
    # for the fleet is one reading sealed once (the ledger's reading index has one row per device
    # and seq). Readings published but not yet acknowledged when the fleet stopped (PUBACKs a
    # loaded Mosquitto had not sent within the fleet's drain) are stored and sealed too: counted
    # apart, not as doubles.
    with Ledger(settings.ledger_target) as ledger:
        row.sealed = ledger.reading_count(prefix + "-")
    row.complete = not pending and row.stored == row.sealed and row.sealed >= row.acked
    if pending:
        row.note = f"{len(pending)} not stored after {drain_timeout:.0f}s"
    elif row.stored != row.sealed:
        row.note = (f"InfluxDB holds {row.stored} points for the {row.sealed} readings "
                    "sealed in the ledger")
    elif row.sealed < row.acked:
        row.note = f"{row.sealed} readings sealed for {row.acked} acknowledged"
    if not located:
        return
    seen = {wid: poller.first_seen(wid) or 0.0 for wid, _ in located.values()}
    done_at = max(seen.values())
    row.pipeline_rate = len(located) / (done_at - started)
    row.drain_s = done_at - published_end
    sampled = {identity.device_id for identity in identities[:sample]}
    deadline = time.monotonic() + 5.0  # the poller's next round after the drain
    while True:
        queryable = [(api.queryable_between(d, s), ts_us) for (d, s), (_, ts_us) in located.items()
                     if d in sampled]
        if all(t is not None for t, _ in queryable) or time.monotonic() > deadline:
            break
        time.sleep(api.interval_s)
    latencies = sorted(t[1] - ts_us / 1e6 for t, ts_us in queryable if t is not None)
    lower = sorted(max(0.0, t[0] - ts_us / 1e6) for t, ts_us in queryable if t is not None)
    row.api_sampled = len(latencies)
    if api.request_s:
        row.api_request_p50 = statistics.median(api.request_s)
    # Where the time goes: sample -> the bridge's receipt stamp, for the sampled devices.
    bridge_lag = sorted(
        (r["received_us"] - r["time"] / 1000) / 1e6
        for d in sorted(sampled) for r in influx_query(
            settings, f"SELECT received_us FROM readings WHERE device_id = '{d}'"))
    if bridge_lag:
        row.bridge_p50 = statistics.median(bridge_lag)
        row.bridge_p99 = p99(bridge_lag)
    if len(latencies) < len(queryable):
        row.note += f"{len(queryable) - len(latencies)} sampled readings never seen via the API; "
    if latencies:
        row.p50 = statistics.median(latencies)
        row.p99 = p99(latencies)
        row.worst = latencies[-1]
        row.p50_lower = statistics.median(lower)
        row.p99_lower = p99(lower)
    stored_at = [(t, ts_us) for (d, s), (_, ts_us) in located.items()
                 if d in sampled and (t := api.queryable_between(d, s, "influx")) is not None]
    stored_lat = sorted(t[1] - ts_us / 1e6 for t, ts_us in stored_at)
    stored_lower = sorted(max(0.0, t[0] - ts_us / 1e6) for t, ts_us in stored_at)
    if stored_lat:
        row.stored_p50 = statistics.median(stored_lat)
        row.stored_p99 = p99(stored_lat)
        row.stored_p99_lower = p99(stored_lower)
    sealed = sorted((sealer.first_seen(wid) or seen[wid]) - ts_us / 1e6 for wid, ts_us in located.values())
    row.sealed_p50 = statistics.median(sealed)
    row.sealed_p99 = p99(sealed)
    row.sealed_max = sealed[-1]


def print_table(rows: list[Row], seconds: float, window_seconds: float,
                ceiling: tuple[int, float, float] | None, ledger: str = "sqlite",
                poll_s: float = POLL_S) -> None:
    print()
    print(f"pipeline vs. raw simulator, {seconds:.0f} s per run, window {window_seconds:g} s, ledger {ledger}, "
          f"q = sample → returned by the clinician API (sampled devices, poll {poll_s:g} s), "
          "s = sample → sealed in the ledger")
    header = (f"{'devices':>7} {'Hz':>4} {'batch':>5} {'wrk':>3} {'offered/s':>9} {'raw acked/s':>11} "
              f"{'e2e stored/s':>12} {'ratio':>6} {'q p50':>6} {'q p99':>6} {'q max':>6} {'s p50':>6} "
              f"{'s p99':>6} {'s max':>6} {'drain s':>7} {'q n':>6}  exactly-once")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = r.pipeline_rate / r.raw_rate if r.raw_rate else float("nan")
        check = "yes" if r.complete else f"NO ({r.note})"
        print(f"{r.devices:>7} {r.rate:>4g} {r.batch:>5} {r.workers:>3} {r.devices * r.rate:>9.0f} "
              f"{r.raw_rate:>11.1f} {r.pipeline_rate:>12.1f} {ratio:>6.2f} {r.p50:>6.2f} {r.p99:>6.2f} "
              f"{r.worst:>6.2f} {r.sealed_p50:>6.2f} {r.sealed_p99:>6.2f} {r.sealed_max:>6.2f} "
              f"{r.drain_s:>7.2f} {r.api_sampled:>6}  {check}")
    print("(q = sample to returned by GET /clinician/patients, over the q n readings of the sampled "
          "devices; s = sample to sealed in the ledger; seconds)")
    for r in rows:
        print(f"{r.devices:>7} devices: sample -> bridge receipt p50 {r.bridge_p50:.2f} s, p99 "
              f"{r.bridge_p99:.2f} s; -> in InfluxDB p50 {r.stored_p50:.2f} s, p99 "
              f"{r.stored_p99:.2f} s; one GET /clinician/patients p50 {r.api_request_p50:.3f} s")
        print(f"{r.devices:>7} devices: poll bracket (true value between): q p50 "
              f"[{r.p50_lower:.2f}, {r.p50:.2f}] s, q p99 [{r.p99_lower:.2f}, {r.p99:.2f}] s; "
              f"in InfluxDB p99 [{r.stored_p99_lower:.2f}, {r.stored_p99:.2f}] s")
    print()
    print("CPU ms per 1,000 readings stored, by process (user+system from /proc):")
    print(f"{'devices':>7} " + " ".join(f"{c:>10}" for c in CPU_COLUMNS) + f" {'pipeline':>10}")
    for r in rows:
        if not r.cpu_ms_per_1k:
            continue
        own = sum(r.cpu_ms_per_1k.get(c, 0.0) for c in ("bridge", "kafka", "stream", "influxdb", "postgres"))
        print(f"{r.devices:>7} " + " ".join(f"{r.cpu_ms_per_1k.get(c, float('nan')):>10.1f}"
                                              for c in CPU_COLUMNS) + f" {own:>10.1f}")
    print("(pipeline = bridge + Kafka + stream + InfluxDB (+ PostgreSQL), the processes the target budget counts)")
    for r in rows:
        if r.cpu_ms_per_1k and r.stored:
            share = r.influx_poll_ms_s * r.cpu_span_s / r.stored * 1000
            print(f"{r.devices:>7} devices: influxd with only the bench's pollers running "
                  f"{r.influx_poll_ms_s:.1f} ms CPU/s (after the drain, {POLL_PROBE_S:g} s); over "
                  f"the row's {r.cpu_span_s:.0f} s that is ~{share:.1f} of its InfluxDB "
                  f"{r.cpu_ms_per_1k.get('influxdb', float('nan')):.1f} µs per reading")
    print()
    print("Steady span (99 % of the devices connected, before the fleet stops; SteadySpan): rates, and CPU "
          "ms per 1,000 readings (simulator and Mosquitto per reading acknowledged, the pipeline's "
          "per reading sealed and stored in the span):")
    print(f"{'devices':>7} {'span s':>6} {'acked/s':>9} {'stored/s':>9} "
          + " ".join(f"{c:>10}" for c in CPU_COLUMNS) + f" {'pipeline':>10}")
    for r in rows:
        if not r.steady_cpu_ms_per_1k:
            continue
        own = sum(r.steady_cpu_ms_per_1k.get(c, 0.0)
                  for c in ("bridge", "kafka", "stream", "influxdb", "postgres"))
        print(f"{r.devices:>7} {r.steady_s:>6.1f} {r.steady_acked_rate:>9.1f} "
              f"{r.steady_stored_rate:>9.1f} "
              + " ".join(f"{r.steady_cpu_ms_per_1k.get(c, float('nan')):>10.1f}" for c in CPU_COLUMNS)
              + f" {own:>10.1f}")
    for r in rows:
        if r.steady_cpu_ms_per_1k:
            print(f"{r.devices:>7} devices: span {r.steady_counts[0]} readings acknowledged, "
                  f"{r.steady_counts[1]} sealed and stored")
        elif r.steady_missing:
            print(f"{r.devices:>7} devices: {r.steady_missing}")
    print("(stored/s below acked/s: the pipeline fell behind in the span, and its CPU figures are "
          "per reading it completed there)")
    if ceiling is not None:
        devices, rate, acked_per_s = ceiling
        best = max((r for r in rows if r.complete), key=lambda r: r.pipeline_rate, default=None)
        print(f"simulator ceiling against Mosquitto alone ({devices} devices x {rate:g} Hz offered): "
              f"{acked_per_s:.0f} readings/s acked")
        if best is not None and acked_per_s:
            print(f"best pipeline row: {best.pipeline_rate:.0f} readings/s stored at "
                  f"{best.devices * best.rate:.0f}/s offered = {best.pipeline_rate / acked_per_s:.2f} "
                  "of that ceiling (the pipeline's own limit shows only where a row falls behind its "
                  "offered rate: ratio well below 1, latency growing)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="10,100,500", help="comma-separated device counts")
    parser.add_argument("--rate", type=float, default=2.0, help="readings/s per device")
    parser.add_argument("--seconds", type=float, default=20.0, help="fleet run length per row")
    parser.add_argument("--batch", type=int, default=1, help="readings per MQTT message")
    parser.add_argument("--workers", type=int, default=1, help="stream worker processes")
    parser.add_argument("--ledger", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the ledger's backend (postgresql: a private server on a free port)")
    parser.add_argument("--unsigned", action="store_true",
                        help="devices publish unsigned (VITALCHAIN_DEVICE_SIGNATURES=optional): "
                             "the baseline of device signatures' cost")
    parser.add_argument("--receipt-flush-seconds", type=float,
                        default=Settings.receipt_flush_seconds,
                        help="VITALCHAIN_RECEIPT_FLUSH_SECONDS of the stream: how often it writes "
                             "the readings it took to InfluxDB")
    parser.add_argument("--fetch-wait-ms", type=int, default=Settings.kafka_fetch_wait_ms,
                        help="VITALCHAIN_KAFKA_FETCH_WAIT_MS of the stream: the longest its fetch "
                             "waits for records (tansu answers only at this deadline)")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="copy the bridge's, stream's and API's logs (their progress lines, "
                             "one a second) to DIR before the temporary folder goes")
    parser.add_argument("--window-seconds", type=float, default=2.0)
    parser.add_argument("--idle-seal-seconds", type=float, default=1.0)
    parser.add_argument("--ceiling-rate", type=float, default=20.0,
                        help="readings/s per device of the raw ceiling run (0: skip it)")
    parser.add_argument("--api-sample", type=int, default=20,
                        help="devices per fleet whose patients the polling clinician is granted")
    parser.add_argument("--poll-seconds", type=float, default=POLL_S,
                        help="the clinician API poller's interval (the q latency's resolution)")
    parser.add_argument("--drain-timeout", type=float, default=90.0,
                        help="how long a row may take to store everything after publishing ends")
    args = parser.parse_args()
    try:
        counts = [int(x) for x in args.devices.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--devices must be comma-separated integers, not {args.devices!r}")
    if not counts or min(counts) < 1:
        parser.error("--devices needs at least one positive count")
    if args.rate <= 0 or args.seconds <= 0:
        parser.error("--rate and --seconds must be positive")

    if not 0 < args.poll_seconds <= 5:
        parser.error("--poll-seconds must be in (0, 5]")
    if args.batch < 1 or args.workers < 1:
        parser.error("--batch and --workers must be at least 1")
    rows = [Row(n, args.rate, args.batch, args.workers) for n in counts]
    ceiling: tuple[int, float, float] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
        try:
            settings = bench_settings(Path(folder), args.window_seconds, args.idle_seal_seconds,
                                      args.ledger, args.unsigned, args.receipt_flush_seconds,
                                      args.fetch_wait_ms)
        except ConfigError as exc:
            parser.error(str(exc))
        services = (*SERVICES, "postgres") if args.ledger == "postgresql" else SERVICES
        stack = Stack(settings)
        try:
            print(f"starting {', '.join(services)} in {folder}", flush=True)
            # Provisioned before Mosquitto starts: it reads every user at start, while adding
            # thousands to a running one costs time per user (docs/DECISIONS.md D12).
            fleets = {n: provision_devices(settings, n, prefix=f"b{n}") for n in counts}
            if args.unsigned:
                fleets = {n: _unsigned(f) for n, f in fleets.items()}
            probe = provision_devices(settings, 1, prefix="probe")[0]
            stack.up(services)
            token = grant_sample(settings, fleets, args.api_sample)
            # Raw first: before any bridge subscribed, Mosquitto has no one to queue for.
            for row in rows:
                row.raw_rate = run_raw(settings, fleets[row.devices], row.rate, args.seconds, args.batch)
                print(f"raw      {row.devices:>5} devices: {row.raw_rate:8.1f} readings/s acked", flush=True)
            if args.ceiling_rate > 0:
                largest = max(counts)
                ceiling = (largest, args.ceiling_rate,
                           run_raw(settings, fleets[largest], args.ceiling_rate, min(args.seconds, 10.0),
                                   args.batch))
                print(f"ceiling  {largest:>5} devices: {ceiling[2]:8.1f} readings/s acked "
                      f"({args.ceiling_rate:g} Hz offered)", flush=True)
            with Pipeline(settings) as pipeline, WindowPoller(settings) as poller:
                pipeline.start("bridge", None, "--progress-every", "1")
                pipeline.start("stream", None, "--progress-seconds", "1", "--workers", str(args.workers))
                pipeline.start("api", None, "--seal-seconds", "30")
                wait_flowing(settings, probe, pipeline, timeout=60)
                api_url = f"http://{settings.host}:{settings.api_port}"
                with SealPoller(settings) as sealer, ApiPoller(settings, api_url, token,
                                                                    args.poll_seconds) as api:
                    for row in rows:
                        run_pipeline_row(settings, stack, pipeline, poller, sealer, api, row,
                                         fleets[row.devices], args.seconds, args.drain_timeout,
                                         args.api_sample)
                        print(f"pipeline {row.devices:>5} devices: {row.pipeline_rate:8.1f} readings/s "
                              f"stored, queryable p50 {row.p50:.2f} s, p99 {row.p99:.2f} s "
                              f"({row.api_sampled} sampled), sealed p99 {row.sealed_p99:.2f} s"
                              + ("" if row.complete else f"  INCOMPLETE: {row.note}"), flush=True)
                        print(f"  {row.acked} readings acknowledged to devices, {row.sealed} sealed "
                              f"(published unacknowledged at the fleet's stop: "
                              f"{max(row.sealed - row.acked, 0)}), {row.stored} points in InfluxDB",
                              flush=True)
                        if not row.complete:
                            for later in rows[rows.index(row) + 1:]:
                                later.note = "not run: the previous row did not drain"
                            break
        finally:
            stack.down()
            if args.keep_logs is not None:
                shutil.copytree(settings.logs_dir, args.keep_logs, dirs_exist_ok=True)
                print(f"the pipeline's logs are in {args.keep_logs}")
    print_table(rows, args.seconds, args.window_seconds, ceiling, args.ledger, args.poll_seconds)
    return 0 if all(r.complete for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
