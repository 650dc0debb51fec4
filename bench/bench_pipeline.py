"""End-to-end throughput and latency of the pipeline, next to the simulator's raw rate.

    .venv/bin/python bench/bench_pipeline.py                          # 10,100,500 devices, 2 Hz, 20 s
    .venv/bin/python bench/bench_pipeline.py --devices 10,100 --seconds 10 --rate 5
    .venv/bin/python bench/bench_pipeline.py --devices 500,1000 --rate 5   # past this box's limit

Starts a private stack (Mosquitto, Kafka, InfluxDB) on free loopback ports in a temporary folder
and tears it down at the end. For each device count, in the same run:

- **raw**: the fleet against Mosquitto alone (no bridge has ever subscribed, so the broker acks and
  discards): readings acknowledged per second. This is the ceiling the simulator reaches here.
- **ceiling**: the largest fleet at ``--ceiling-rate`` per device against Mosquitto alone: the most
  the simulator and broker do here, against which the best pipeline rate is also put.
- **pipeline**: the same fleet through bridge → Kafka → stream worker → InfluxDB + ledger (the
  ``vitalchain bridge run`` / ``stream run`` processes an operator starts): readings *sealed and
  stored* per second, from the fleet's start to the moment the last of its readings was queryable.

Latency is per reading, from the device's sample time (``ts_us``, taken just before the PUBLISH on
the same clock) to the moment its window's ``windows`` point was first seen by a poller querying
InfluxDB every 0.2 s. The sealer writes a window's readings before that point, so this is when the
reading was queryable at the latest (resolution: the poll interval). It includes waiting for the
window to close, so it is bounded below by the window length (``--window-seconds``).

Every row also checks that each acknowledged reading is in InfluxDB exactly once; a row whose
readings do not all arrive within ``--drain-timeout`` is reported as incomplete and ends the run.
All processes share this machine's cores, so the ratio is what one box sustains, not a cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from vitalchain.devices.fleet import run_fleet
from vitalchain.devices.registry import DeviceIdentity, provision_devices

from vitalchain.app.pipeline import Pipeline
from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import Settings, load_settings
from vitalchain.storage.influx import rows_of
from vitalchain.storage.ledger import Ledger

POLL_S = 0.2
SERVICES = ("mosquitto", "kafka", "influxdb")


@dataclass
class Row:
    devices: int
    rate: float
    raw_rate: float = 0.0
    acked: int = 0
    stored: int = 0
    pipeline_rate: float = 0.0
    p50: float = float("nan")
    p99: float = float("nan")
    worst: float = float("nan")
    drain_s: float = float("nan")
    complete: bool = False
    note: str = ""


def influx_query(settings: Settings, query: str) -> list[dict]:
    response = httpx.post(f"{settings.influx_url}/query", timeout=30,
                          data={"db": settings.influx_db, "q": query, "epoch": "ns"})
    response.raise_for_status()
    return rows_of(response.json())


class WindowPoller:
    """Records when each sealed window first became visible in InfluxDB (wall clock)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="window-poller", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rows = influx_query(self.settings, "SELECT size, window_id FROM windows")
            except (httpx.HTTPError, ValueError):
                rows = []
            now = time.time()
            with self._lock:
                for row in rows:
                    self.seen.setdefault(str(row["window_id"]), now)
            self._stop.wait(POLL_S)

    def first_seen(self, window_id: str) -> float | None:
        with self._lock:
            return self.seen.get(window_id)

    def __enter__(self) -> WindowPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def bench_settings(folder: Path, window_seconds: float, idle_seal_seconds: float) -> Settings:
    mqtt, kafka, influx, eth, rpc = free_ports(5)
    return load_settings(environ={}, state_dir=folder, mqtt_port=mqtt, kafka_port=kafka,
                         influx_port=influx, eth_port=eth, influx_rpc_port=rpc,
                         window_seconds=window_seconds, idle_seal_seconds=idle_seal_seconds,
                         stream_app_id="vitalchain-bench")


def run_raw(settings: Settings, identities: list[DeviceIdentity], rate: float, seconds: float) -> float:
    stats = asyncio.run(run_fleet(settings, identities, rate=rate, duration=seconds, track_acked=False))
    return stats.acked / stats.elapsed_s if stats.elapsed_s else 0.0


def wait_flowing(settings: Settings, pipeline: Pipeline, probe: DeviceIdentity, timeout: float = 60) -> None:
    """Publish probe readings until one is stored: the bridge subscribed and the stream joined."""
    deadline = time.monotonic() + timeout
    query = f"SELECT count(seq) FROM readings WHERE device_id = '{probe.device_id}'"
    while time.monotonic() < deadline:
        pipeline.check_alive()
        asyncio.run(run_fleet(settings, [probe], rate=5.0, count=1, drain_timeout=5.0))
        wait_end = time.monotonic() + 5
        while time.monotonic() < wait_end:
            if influx_query(settings, query):
                return
            time.sleep(0.25)
    raise TimeoutError(f"no probe reading got through bridge and stream within {timeout:.0f}s")


def last_progress(pipeline: Pipeline, name: str, marker: str) -> str:
    """The component's latest progress line (cumulative counters), to see where a backlog sits."""
    lines = pipeline.components[name].log.read_text(errors="replace").splitlines()
    return next((line.strip() for line in reversed(lines) if marker in line), "(none yet)")


def run_pipeline_row(settings: Settings, pipeline: Pipeline, poller: WindowPoller, row: Row,
                     identities: list[DeviceIdentity], seconds: float, drain_timeout: float) -> None:
    started = time.time()
    stats = asyncio.run(run_fleet(settings, identities, rate=row.rate, duration=seconds))
    published_end = time.time()
    print(f"  publishing done ({stats.acked} acked); cumulative counters now:\n"
          f"    {last_progress(pipeline, 'bridge', 'forwarded=')}\n"
          f"    {last_progress(pipeline, 'stream', 'sealed_readings=')}", flush=True)
    row.acked = len(stats.acked_ids)
    pending = set(stats.acked_ids)
    located: dict[tuple[str, int], tuple[str, int]] = {}  # (device, seq) -> (window_id, ts_us)
    deadline = time.monotonic() + drain_timeout
    with Ledger(settings.ledger_path) as ledger:
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
    prefix = identities[0].device_id.rsplit("-", 1)[0]
    counts = influx_query(settings, f"SELECT count(seq) FROM readings WHERE device_id =~ /^{prefix}-/")
    row.stored = int(counts[0]["count"]) if counts else 0
    row.complete = not pending and row.stored == row.acked
    if pending:
        row.note = f"{len(pending)} not stored after {drain_timeout:.0f}s"
    elif row.stored != row.acked:
        row.note = f"InfluxDB holds {row.stored} points for {row.acked} readings"
    if not located:
        return
    seen = {wid: poller.first_seen(wid) or 0.0 for wid, _ in located.values()}
    latencies = sorted(seen[wid] - ts_us / 1e6 for wid, ts_us in located.values())
    done_at = max(seen.values())
    row.pipeline_rate = len(located) / (done_at - started)
    row.drain_s = done_at - published_end
    row.p50 = statistics.median(latencies)
    row.p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    row.worst = latencies[-1]


def print_table(rows: list[Row], seconds: float, window_seconds: float,
                ceiling: tuple[int, float, float] | None) -> None:
    print()
    print(f"pipeline vs. raw simulator, {seconds:.0f} s per run, window {window_seconds:g} s, "
          f"latency = sample → queryable in InfluxDB (±{POLL_S} s)")
    header = (f"{'devices':>7} {'Hz':>4} {'offered/s':>9} {'raw acked/s':>11} {'e2e stored/s':>12} "
              f"{'ratio':>6} {'p50 s':>6} {'p99 s':>6} {'max s':>6} {'drain s':>7}  exactly-once")
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = r.pipeline_rate / r.raw_rate if r.raw_rate else float("nan")
        check = "yes" if r.complete else f"NO ({r.note})"
        print(f"{r.devices:>7} {r.rate:>4g} {r.devices * r.rate:>9.0f} {r.raw_rate:>11.1f} "
              f"{r.pipeline_rate:>12.1f} {ratio:>6.2f} {r.p50:>6.2f} {r.p99:>6.2f} {r.worst:>6.2f} "
              f"{r.drain_s:>7.2f}  {check}")
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
    parser.add_argument("--window-seconds", type=float, default=2.0)
    parser.add_argument("--idle-seal-seconds", type=float, default=1.0)
    parser.add_argument("--ceiling-rate", type=float, default=20.0,
                        help="readings/s per device of the raw ceiling run (0: skip it)")
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

    rows = [Row(n, args.rate) for n in counts]
    ceiling: tuple[int, float, float] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
        settings = bench_settings(Path(folder), args.window_seconds, args.idle_seal_seconds)
        stack = Stack(settings)
        try:
            print(f"starting {', '.join(SERVICES)} in {folder}", flush=True)
            # Provisioned before Mosquitto starts: it reads every user at start, while adding
            # thousands to a running one costs time per user (docs/DECISIONS.md D8).
            fleets = {n: provision_devices(settings, n, prefix=f"b{n}") for n in counts}
            probe = provision_devices(settings, 1, prefix="probe")[0]
            stack.up(SERVICES)
            # Raw first: before any bridge subscribed, Mosquitto has no one to queue for.
            for row in rows:
                row.raw_rate = run_raw(settings, fleets[row.devices], row.rate, args.seconds)
                print(f"raw      {row.devices:>5} devices: {row.raw_rate:8.1f} readings/s acked", flush=True)
            if args.ceiling_rate > 0:
                largest = max(counts)
                ceiling = (largest, args.ceiling_rate,
                           run_raw(settings, fleets[largest], args.ceiling_rate, min(args.seconds, 10.0)))
                print(f"ceiling  {largest:>5} devices: {ceiling[2]:8.1f} readings/s acked "
                      f"({args.ceiling_rate:g} Hz offered)", flush=True)
            with Pipeline(settings) as pipeline, WindowPoller(settings) as poller:
                pipeline.start("bridge", None, "--progress-every", "1")
                pipeline.start("stream", None, "--progress-seconds", "1")
                wait_flowing(settings, pipeline, probe)
                for row in rows:
                    run_pipeline_row(settings, pipeline, poller, row, fleets[row.devices],
                                     args.seconds, args.drain_timeout)
                    print(f"pipeline {row.devices:>5} devices: {row.pipeline_rate:8.1f} readings/s "
                          f"stored, p50 {row.p50:.2f} s, p99 {row.p99:.2f} s"
                          + ("" if row.complete else f"  INCOMPLETE: {row.note}"), flush=True)
                    if not row.complete:
                        for later in rows[rows.index(row) + 1:]:
                            later.note = "not run: the previous row did not drain"
                        break
        finally:
            stack.down()
    print_table(rows, args.seconds, args.window_seconds, ceiling)
    return 0 if all(r.complete for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
