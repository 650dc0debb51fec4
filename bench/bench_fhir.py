"""FHIR search and read latency over HTTP on a private InfluxDB: first pages, deep pages, reads.

    .venv/bin/python bench/bench_fhir.py                        # 20,000 readings of one patient
    .venv/bin/python bench/bench_fhir.py --readings 5000 --reps 10

One patient wears two devices reading once a second (the second on the same timestamps as the
first for its first tenth, so the tie handling is exercised).  Readings are written straight
into InfluxDB as the sink writes them (no ledger: FHIR reads only InfluxDB).  The API runs under
uvicorn in this process; requests are plain HTTP from the same process.  Keyset paging should
make the last page cost what the first does; that is what ``deep pages`` compares.  Times are
wall clock on this shared 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitalchain.api.app import create_app
from vitalchain.app.stack.ports import free_port, free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import load_settings
from vitalchain.core.integrity import canonical_reading, reading_leaf_hash
from vitalchain.storage.apistore import ApiStore
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.readings import reading_point

START_US = 1_796_000_000_000_000  # 2026-11-30T...


def _ms(samples: list[float]) -> str:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(0.95 * len(samples)))]
    return f"median {statistics.median(samples) * 1e3:.1f} ms, p95 {p95 * 1e3:.1f} ms (n={len(samples)})"


def _seed(settings: object, readings: int) -> None:
    points = []
    ties = readings // 10
    for i in range(readings):
        device, seq = ("dev-1", i) if i < readings - ties else ("dev-2", i - (readings - ties))
        raw = {"device_id": device, "patient_id": "pat-a", "seq": seq,
               "ts_us": START_US + seq * 1_000_000,
               "vitals": {"hr": 70 + seq % 9, "spo2": 97, "rr": 16, "temp_c": 36.8, "sys": 120,
                          "dia": 80}}
        canon = canonical_reading(raw, b"\x11" * 32)
        points.append(reading_point(canon, reading_leaf_hash(canon), "w", False, raw["ts_us"]))

    async def write() -> None:
        async with InfluxClient(settings) as influx:  # type: ignore[arg-type]
            for i in range(0, len(points), 5000):
                await influx.write(points[i:i + 5000])

    asyncio.run(write())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fhir-") as folder:
        influx_port, rpc_port = free_ports(2)
        settings = load_settings(environ={}, state_dir=Path(folder), influx_port=influx_port,
                                 influx_rpc_port=rpc_port)
        stack = Stack(settings)
        try:
            stack.up(("influxdb",))
            t0 = time.perf_counter()
            _seed(settings, args.readings)
            print(f"seeded {args.readings} readings in {time.perf_counter() - t0:.1f} s")
            store = ApiStore(Path(folder) / "api.sqlite")
            token = store.add_user("alice", "clinician")
            store.add_grant("pat-a", "alice", START_US * 2, "bench")
            store.close()
            port = free_port()
            app = create_app(settings, seal_seconds=3600, store_path=str(Path(folder) / "api.sqlite"))
            server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                   log_level="warning", access_log=False))
            thread = threading.Thread(target=server.run, daemon=True)
            thread.start()
            base = f"http://127.0.0.1:{port}"
            client = httpx.Client(base_url=base, timeout=60,
                                  headers={"Authorization": f"Bearer {token}"})
            deadline = time.monotonic() + 30
            while not server.started:
                if time.monotonic() > deadline:
                    raise SystemExit("uvicorn did not start")
                time.sleep(0.05)

            def timed(url: str, **params: object) -> tuple[float, dict]:
                t = time.perf_counter()
                r = client.get(url, params=params) if params else client.get(url)  # type: ignore[arg-type]
                elapsed = time.perf_counter() - t
                assert r.status_code == 200, r.text[:500]
                return elapsed, r.json()

            samples = [timed("/me")[0] for _ in range(args.reps)]
            print(f"baseline GET /me (auth + access log, no InfluxDB): {_ms(samples)}")
            for sort in ("date", "-date"):
                samples = [timed("/fhir/Observation", patient="pat-a", _count=100, _sort=sort)[0]
                           for _ in range(args.reps)]
                print(f"first page, _count=100, _sort={sort}: {_ms(samples)}")
            samples = [timed("/fhir/Observation", patient="pat-a", _count=0)[0]
                       for _ in range(args.reps)]
            print(f"_count=0 (total only) over {args.readings} readings: {_ms(samples)}")

            pages: list[float] = []
            ids: list[str] = []
            url: str | None = "/fhir/Observation?patient=pat-a&_count=1000&_sort=date"
            seen = 0
            started = time.perf_counter()
            while url:
                elapsed, body = timed(url)
                pages.append(elapsed)
                seen += len(body["entry"])
                ids += [e["resource"]["id"] for e in body["entry"][::50]]
                url = next((x["url"] for x in body["link"] if x["relation"] == "next"), None)
            walk = time.perf_counter() - started
            assert seen == args.readings * 5, (seen, args.readings * 5)
            k = max(1, len(pages) // 10)
            print(f"paged through all {seen} Observations, _count=1000: {len(pages)} pages in "
                  f"{walk:.1f} s; first {k} pages {_ms(pages[:k])}; last {k} pages {_ms(pages[-k:])}")
            sample = random.Random(1).sample(ids, min(len(ids), args.reps * 3))
            samples = [timed(f"/fhir/Observation/{oid}")[0] for oid in sample]
            print(f"read by id: {_ms(samples)}")
            server.should_exit = True
            thread.join(30)
        finally:
            stack.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
