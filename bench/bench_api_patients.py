"""GET /clinician/patients, before tree vs after tree, side by side in one run: CPU per request.

    .venv/bin/python bench/bench_api_patients.py --base /work/wt-apiread-base
    .venv/bin/python bench/bench_api_patients.py --base ../wt-base --patients 50 --rounds 10
    .venv/bin/python bench/bench_api_patients.py --base ../wt-base --live 5   # the store growing

One private InfluxDB; a store like the pipeline bench's after a few minutes: ``--devices`` devices
in the registry, one per patient, the clinician granted ``--patients`` of them; each granted
device has ``--history`` readings a second apart (the newest ``--unsealed`` only *received*:
written to InfluxDB in the partition's open window, not in the ledger), sealed in windows of
``--window`` readings of partition 0 with the other devices' readings (``--others`` in all,
ledger only, so the reading index has a realistic depth); an anchored checkpoint covers the
first half of the windows, so the API serves received, sealed and anchored readings.  The
granted patient ``--altered`` ones get their newest sealed reading altered in InfluxDB (withheld,
and the scan goes past it).

The seeded state folder is copied once per tree, and each tree's own ``vitalchain api`` process
(its own .venv) serves its copy against the same InfluxDB.  Each round sends ``--requests``
sequential GETs to each tree, in alternating order, and reads from /proc the CPU (user+system)
of that tree's API process and of ``influxd`` over those requests: CPU per request is that delta
divided by the requests, so both sides see the same machine state.  The trees must answer alike:
every round compares the two bodies (the access-log noise aside) and the run fails if they differ.

``--live HZ``: while the trees are polled, the granted devices that did not go quiet read on at
HZ (each reading written to InfluxDB at once, received; the open window sealed into both trees'
ledger copies every ``--seal-s``), so the API meets new points, new windows and readings
turning sealed as under the pipeline; the answers are then not compared (the store changes
between the two trees' requests).

Printed per tree: API CPU ms per request (median of the rounds), InfluxDB CPU ms per request,
latency p50/p95 over all requests, and the after/before ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from web3 import Web3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitalchain.app.stack.ports import free_port, free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import Settings, load_settings, to_environ
from vitalchain.core.integrity import build_window_header, canonical_reading, reading_leaf_hash, salt_key_id
from vitalchain.core.integrity.window import window_id
from vitalchain.storage.anchors import AnchorStore
from vitalchain.storage.apistore import ApiStore
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger, ReadingIndexRow
from vitalchain.storage.logmirror import LogMirror
from vitalchain.storage.readings import reading_point

SALT_KEY = b"\x33" * 32
TOPIC = "vitals.raw"
CONTRACT = Web3.to_checksum_address("0x" + "ab" * 20)
T0 = 1_796_000_000_000_000


def _vitals(i: int) -> dict[str, Any]:
    return {"hr": 60 + i % 40, "spo2": 94 + i % 6, "rr": 12 + i % 8, "temp_c": 36.0 + (i % 20) / 10,
            "sys": 110 + i % 30, "dia": 70 + i % 15}


@dataclass
class Seeded:
    token: str
    offset: int  # first offset of partition 0's open window
    received: list[dict[str, Any]]  # canonical readings in the open window, not sealed
    next_seq: dict[str, int]  # granted devices still reading: their next seq


def seed(settings: Settings, args: argparse.Namespace) -> Seeded:
    """Registry, ledger, InfluxDB points, anchor records and a clinician."""
    devices = [f"dev-{i:05d}" for i in range(args.devices)]
    registry = {d: f"pat-{i:05d}" for i, d in enumerate(devices)}
    (settings.state_dir / "devices").mkdir(parents=True, exist_ok=True)
    (settings.state_dir / "devices" / "registry.json").write_text(json.dumps(registry))
    granted = devices[:args.patients]
    others = devices[args.patients:] or ["dev-other"]
    # Every reading in time order: the granted devices' history, the others' interleaved.
    # Granted device i: every third went quiet after a third of the history (its latest reading
    # is anchored), every third from the second has its newest ``--unsealed`` readings received
    # only (latest: received), the rest end sealed; ``--altered`` of the sealed-ending ones have
    # their newest reading altered after sealing (withheld; the one before is served).
    history = {d: args.history // 3 if i % 3 == 2 else args.history for i, d in enumerate(granted)}
    unsealed_n = {d: args.unsealed if i % 3 == 1 else 0 for i, d in enumerate(granted)}
    altered = [d for i, d in enumerate(granted) if i % 3 == 0][:args.altered]
    raw: list[dict[str, Any]] = []
    for d in granted:
        for s in range(history[d]):
            raw.append({"device_id": d, "patient_id": registry[d], "seq": s,
                        "ts_us": T0 + s * 1_000_000, "vitals": _vitals(s + len(d))})
    per_other = max(1, args.others // len(others))
    for i in range(args.others):
        d = others[i % len(others)]
        raw.append({"device_id": d, "patient_id": registry.get(d, "pat-other"),
                    "seq": i // len(others), "ts_us": T0 + (i * args.history // max(1, args.others))
                    * 1_000_000 + 1 + (i // len(others)) % per_other, "vitals": _vitals(i)})
    raw.sort(key=lambda r: (r["ts_us"], r["device_id"]))
    unsealed = {(d, s) for d in granted for s in range(history[d] - unsealed_n[d], history[d])}
    sealed = [r for r in raw if (r["device_id"], r["seq"]) not in unsealed]
    ledger = Ledger(settings.ledger_target)
    points = []
    offset = 0
    for start in range(0, len(sealed), args.window):
        chunk = [canonical_reading(r, SALT_KEY) for r in sealed[start:start + args.window]]
        leaves = [reading_leaf_hash(c) for c in chunk]
        header = build_window_header(chunk, partition=0, first_offset=offset,
                                     last_offset=offset + len(chunk) - 1,
                                     salt_key_id=salt_key_id(SALT_KEY), leaf_hashes=leaves)
        ledger.append_window(TOPIC, 0, header, leaves,
                             [ReadingIndexRow(c["device_id"], c["seq"], c["ts_us"], i, leaf)
                              for i, (c, leaf) in enumerate(zip(chunk, leaves, strict=True))],
                             idle_cut=False)
        points += [reading_point(c, leaf, header["window_id"], False, c["ts_us"] + 1000)
                   for c, leaf in zip(chunk, leaves, strict=True) if c["device_id"] in registry
                   and c["device_id"] in history]
        offset += len(chunk)
    open_window = window_id(0, offset)
    received = []
    for r in raw:
        if (r["device_id"], r["seq"]) in unsealed:
            c = canonical_reading(r, SALT_KEY)
            received.append(c)
            points.append(reading_point(c, reading_leaf_hash(c), open_window, False, c["ts_us"] + 1000))
    for d in altered:  # the newest sealed reading altered after sealing
        s = history[d] - 1
        c = canonical_reading({"device_id": d, "patient_id": registry[d], "seq": s,
                               "ts_us": T0 + s * 1_000_000, "vitals": _vitals(s + len(d))}, SALT_KEY)
        leaf = reading_leaf_hash(c)
        c["vitals"]["hr"] = 33
        points.append(reading_point(c, leaf, "p0-0", False, c["ts_us"] + 1000))
    size = ledger.log_size()
    mirror = LogMirror(ledger)
    mirror.sync()
    anchored = max(1, size // 2)
    with AnchorStore(settings.ledger_target) as anchors:
        anchors.add_checkpoint(CONTRACT, 31337, anchored, mirror.log.root(anchored).hex())
        anchors.mark_anchored(CONTRACT, anchored, 12)
    ledger.close()

    async def write() -> None:
        async with InfluxClient(settings, timeout_s=120) as influx:
            for i in range(0, len(points), 5000):
                await influx.write(points[i:i + 5000])

    asyncio.run(write())
    store = ApiStore(settings.state_dir / "api.sqlite")
    token = store.add_user("alice", "clinician")
    for d in granted:
        store.add_grant(registry[d], "alice", T0 * 2, "bench")
    store.close()
    print(f"seeded {args.devices} devices, {args.patients} granted patients x {args.history} "
          f"readings (newest {args.unsealed} received only on {sum(map(bool, unsealed_n.values()))}"
          f", quiet after {args.history // 3} on {sum(h < args.history for h in history.values())}"
          f", newest altered on {len(altered)}), {args.others} other readings in the ledger, "
          f"{size} windows, anchored checkpoint {anchored}", flush=True)
    return Seeded(token, offset, received,
                  {d: history[d] for d in granted if history[d] == args.history})


class Live:
    """``--live``: the granted devices still reading go on at ``hz`` while the API is polled.

    Each new reading is written to InfluxDB at once in partition 0's open window (received), and
    every ``seal_s`` the open window is sealed into every tree's ledger copy (as the stream
    does), so the API meets new points (leaf memo misses), newly sealed windows (log mirror
    sync) and received readings turning sealed, as under the pipeline.
    """

    def __init__(self, settings: Settings, ledgers: list[Path], seeded: Seeded, hz: float,
                 seal_s: float) -> None:
        self.settings, self.seeded, self.hz, self.seal_s = settings, seeded, hz, seal_s
        self.ledgers = [Ledger(p) for p in ledgers]
        self.written = self.sealed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def _seal(self) -> None:
        window = self.seeded.received
        if not window:
            return
        first = self.seeded.offset
        leaves = [reading_leaf_hash(c) for c in window]
        header = build_window_header(window, partition=0, first_offset=first,
                                     last_offset=first + len(window) - 1,
                                     salt_key_id=salt_key_id(SALT_KEY), leaf_hashes=leaves)
        rows = [ReadingIndexRow(c["device_id"], c["seq"], c["ts_us"], i, leaf)
                for i, (c, leaf) in enumerate(zip(window, leaves, strict=True))]
        for ledger in self.ledgers:
            ledger.append_window(TOPIC, 0, header, leaves, rows, idle_cut=False)
        self.seeded.offset += len(window)
        self.seeded.received = []
        self.sealed += len(window)

    async def _run(self) -> None:
        async with InfluxClient(self.settings, timeout_s=60) as influx:
            sealed_at = time.monotonic()
            while not self._stop.wait(1 / self.hz):
                now = time.time_ns() // 1000
                batch = []
                for device, seq in self.seeded.next_seq.items():
                    c = canonical_reading({"device_id": device, "patient_id": "pat-" + device[4:],
                                           "seq": seq, "ts_us": T0 + seq * 1_000_000,
                                           "vitals": _vitals(seq + len(device))}, SALT_KEY)
                    self.seeded.next_seq[device] = seq + 1
                    batch.append(reading_point(c, reading_leaf_hash(c),
                                               window_id(0, self.seeded.offset), False, now))
                    self.seeded.received.append(c)
                await influx.write(batch)
                self.written += len(batch)
                if time.monotonic() - sealed_at >= self.seal_s:
                    self._seal()
                    sealed_at = time.monotonic()

    def __enter__(self) -> Live:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        for ledger in self.ledgers:
            ledger.close()


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Api:
    """One tree's ``vitalchain api`` process over its own copy of the state folder."""

    def __init__(self, name: str, tree: Path, settings: Settings, token: str,
                 influx_pid: int) -> None:
        self.name = name
        self.influx_pid = influx_pid
        self.port = free_port()
        env = {**os.environ, **to_environ(settings)}
        self.log = open(settings.state_dir / "api.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(tree / ".venv" / "bin" / "vitalchain"), "api", "--host",
                                      "127.0.0.1", "--port", str(self.port), "--seal-seconds",
                                      "3600"], env=env, cwd=tree, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60,
                                   headers={"Authorization": f"Bearer {token}"})
        self.latency: list[float] = []
        self.cpu_ms: list[float] = []
        self.influx_ms: list[float] = []
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.client.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name}: the API did not start (see {settings.state_dir}/api.log)")
            time.sleep(0.1)

    def get(self) -> dict[str, Any]:
        began = time.perf_counter()
        response = self.client.get("/clinician/patients")
        self.latency.append(time.perf_counter() - began)
        if response.status_code != 200:
            raise SystemExit(f"{self.name}: {response.status_code} {response.text[:300]}")
        return response.json()

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="the before tree (with its own .venv)")
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the after tree (default: this one)")
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--history", type=int, default=300, help="readings per granted device")
    parser.add_argument("--unsealed", type=int, default=3)
    parser.add_argument("--altered", type=int, default=2)
    parser.add_argument("--others", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=20, help="per tree per round")
    parser.add_argument("--live", type=float, default=0.0, metavar="HZ",
                        help="the granted devices still reading go on at HZ while polled (and "
                             "the trees' answers are not compared: the store changes under them)")
    parser.add_argument("--seal-s", type=float, default=2.0, help="window length with --live")
    args = parser.parse_args()
    trees = [("before", args.base)] if args.base else []
    trees.append(("after", args.tree))
    with tempfile.TemporaryDirectory(prefix="bench-api-patients-") as folder:
        influx_port, rpc = free_ports(2)
        seed_dir = Path(folder) / "seed"
        settings = load_settings(environ={}, state_dir=seed_dir, influx_port=influx_port,
                                 influx_rpc_port=rpc, raw_topic=TOPIC, anchor_contract=CONTRACT)
        stack = Stack(settings)
        apis: list[Api] = []
        try:
            stack.up(("influxdb",))
            influx_pid = stack.pid("influxdb")
            assert influx_pid is not None
            seeded = seed(settings, args)
            copies = []
            for name, tree in trees:
                copy = Path(folder) / name
                shutil.copytree(seed_dir, copy, ignore=shutil.ignore_patterns("influxdb*"))
                copies.append(settings.with_overrides(state_dir=copy))
                apis.append(Api(name, tree, copies[-1], seeded.token, influx_pid))
            bodies = {a.name: a.get() for a in apis}  # warm-up: memo filled, registry read
            print("API pids: " + ", ".join(f"{a.name} {a.proc.pid}" for a in apis), flush=True)
            live = (Live(settings, [Path(c.ledger_path) for c in copies], seeded, args.live,
                         args.seal_s) if args.live else contextlib.nullcontext())
            with live:
                rounds(apis, args, bodies)
            if isinstance(live, Live):
                print(f"live: {live.written} readings written, {live.sealed} sealed while polled")
            report(apis, args, bodies)
        finally:
            for api in apis:
                api.stop()
            stack.down()
    return 0


def rounds(apis: list[Api], args: argparse.Namespace, bodies: dict[str, Any]) -> None:
    """Alternate the trees, ``args.requests`` GETs each per round, CPU read around each run;
    without ``--live`` the two trees' last answers of every round must be identical."""
    for r in range(args.rounds):
        for api in (apis if r % 2 == 0 else apis[::-1]):
            c0, i0 = cpu_s(api.proc.pid), cpu_s(api.influx_pid)
            for _ in range(args.requests):
                bodies[api.name] = api.get()
            api.cpu_ms.append((cpu_s(api.proc.pid) - c0) * 1e3 / args.requests)
            api.influx_ms.append((cpu_s(api.influx_pid) - i0) * 1e3 / args.requests)
        if len(apis) == 2 and not args.live and bodies["before"] != bodies["after"]:
            a, b = (json.dumps(bodies[k], sort_keys=True) for k in ("before", "after"))
            raise SystemExit(f"the trees answer differently:\nbefore {a[:2000]}\nafter  {b[:2000]}")


def report(apis: list[Api], args: argparse.Namespace, bodies: dict[str, Any]) -> None:
    states: dict[str, int] = {}
    for p in bodies[apis[-1].name]["patients"]:
        if p["latest"]:
            states[p["latest"]["state"]] = states.get(p["latest"]["state"], 0) + 1
        for w in p["withheld"]:
            states["withheld " + w["state"]] = states.get("withheld " + w["state"], 0) + 1
    print(f"latest states served: {states}")
    print(f"{'tree':8} {'API CPU ms/req':>15} {'influxd ms/req':>15} {'p50 ms':>8} "
          f"{'p95 ms':>8}  ({args.rounds} rounds x {args.requests} requests)")
    for api in apis:
        print(f"{api.name:8} {statistics.median(api.cpu_ms):15.1f} "
              f"{statistics.median(api.influx_ms):15.1f} {_pct(api.latency, 0.5) * 1e3:8.1f} "
              f"{_pct(api.latency, 0.95) * 1e3:8.1f}")
    if len(apis) == 2:
        b, a = apis
        same = ("not compared (--live)" if args.live else "bodies identical in every round")
        print(f"after/before: API CPU {statistics.median(a.cpu_ms) / statistics.median(b.cpu_ms):.2f}, "
              f"influxd CPU {statistics.median(a.influx_ms) / max(1e-9, statistics.median(b.influx_ms)):.2f}, "
              f"p50 {_pct(a.latency, 0.5) / _pct(b.latency, 0.5):.2f}; {same}")


if __name__ == "__main__":
    sys.exit(main())
