"""Verified vs unverified reads of one patient's readings, side by side, on a private InfluxDB.

    .venv/bin/python bench/bench_reads.py                          # 10,000 readings, 5 rounds
    .venv/bin/python bench/bench_reads.py --readings 86400 --rounds 2  # 24 h of a 1 Hz device

One patient's readings (one device at 1 Hz) are sealed as the stream seals them (salted
canonical readings, window headers, ledger append with the reading index, ``readings`` points in
InfluxDB), in windows of ``--window`` readings; ``--others`` more readings of other devices go
into the ledger's reading index only, so lookups run against an index of realistic depth.

Each round runs every variant once, in turn, so the ratios come from the same machine state:

- *fetch+rebuild* (what the API did before): the raw points of the range from InfluxDB, pages
  of 5,000 (``ORDER BY time LIMIT/OFFSET``), each rebuilt into a reading; nothing checked;
- *fetch+verify*: the same, then every point verified (``ReadVerifier``: leaf recomputed,
  compared with the ledger's, state assigned);
- *fetch+verify, warm leaf memo*: the same with the API's ``LeafMemo`` already holding these
  readings (what a dashboard refresh of the same range finds); the ledger is still asked;
- *verify only* on rows already fetched, split into its two parts: the leaf recomputation
  (``stored_leaf``) and the ledger lookup (``Ledger.locate_many``);
- *downsample*: the old ``GROUP BY time()`` in InfluxDB (unverified) vs the API's verified
  ``downsampled`` (raw points verified, aggregated in Python), 300 points over the range;
- *latest*: the old ``ORDER BY time DESC LIMIT 1`` vs the API's verified ``latest_reading``.

Reported per variant: wall time (median of the rounds), this process's CPU (``process_time``:
parsing, hashing, SQLite) and InfluxDB's CPU (``utime+stime`` of ``influxd`` from /proc), each
also per reading.  Machine: whatever this runs on; the numbers in docs/PERFORMANCE.md say which.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitalchain.api import vitals
from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import Settings, load_settings
from vitalchain.core.integrity import build_window_header, canonical_reading, reading_leaf_hash, salt_key_id
from vitalchain.storage.influx import InfluxClient, quote_ident
from vitalchain.storage.ledger import Ledger, ReadingIndexRow
from vitalchain.storage.readings import VITAL_FIELDS, LeafMemo, reading_from_row, reading_point, stored_leaf
from vitalchain.storage.verified import ReadVerifier

SALT_KEY = b"\x22" * 32
TOPIC = "vitals.raw"
PATIENT, DEVICE = "pat-bench", "dev-bench"
T0 = 1_760_000_000_000_000
_M = quote_ident("readings")


def _vitals(i: int) -> dict[str, Any]:
    return {"hr": 60 + i % 40, "spo2": 94 + i % 6, "rr": 12 + i % 8, "temp_c": 36.0 + (i % 20) / 10,
            "sys": 110 + i % 30, "dia": 70 + i % 15}


def seal_all(settings: Settings, ledger: Ledger, readings: int, others: int, window: int) -> None:
    """Seal ``readings`` of the patient (ledger + InfluxDB) and ``others`` (ledger only)."""
    offset = 0
    pending: list[Any] = []

    async def flush() -> None:
        async with InfluxClient(settings) as influx:
            await influx.write(pending)
        pending.clear()

    def window_of(raw: list[dict[str, Any]], to_influx: bool) -> None:
        nonlocal offset
        canon = [canonical_reading(r, SALT_KEY) for r in raw]
        leaves = [reading_leaf_hash(c) for c in canon]
        header = build_window_header(canon, partition=0, first_offset=offset,
                                     last_offset=offset + len(canon) - 1,
                                     salt_key_id=salt_key_id(SALT_KEY), leaf_hashes=leaves)
        rows = [ReadingIndexRow(c["device_id"], c["seq"], c["ts_us"], i, leaf)
                for i, (c, leaf) in enumerate(zip(canon, leaves, strict=True))]
        ledger.append_window(TOPIC, 0, header, leaves, rows, idle_cut=False)
        if to_influx:
            pending.extend(reading_point(c, leaf, header["window_id"], False, c["ts_us"] + 1000)
                           for c, leaf in zip(canon, leaves, strict=True))
        offset += len(canon)

    for start in range(0, others, window):
        window_of([{"device_id": f"other-{i % 200}", "patient_id": f"pat-{i % 200}",
                    "seq": i // 200, "ts_us": T0 - 10**9 + i, "vitals": _vitals(i)}
                   for i in range(start, min(others, start + window))], False)
    for start in range(0, readings, window):
        window_of([{"device_id": DEVICE, "patient_id": PATIENT, "seq": i,
                    "ts_us": T0 + i * 1_000_000, "vitals": _vitals(i)}
                   for i in range(start, min(readings, start + window))], True)
        if len(pending) >= 20_000:
            asyncio.run(flush())
    asyncio.run(flush())


def influx_cpu_s(stack: Stack) -> float:
    """CPU seconds (user + system) InfluxDB has used so far, from /proc/<pid>/stat."""
    pid = stack.pid("influxdb")
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fetch_rows(influx: InfluxClient, start_us: int, end_us: int) -> list[dict[str, Any]]:
    """The raw points of the range as the verified API pages through them."""
    where, params = vitals._where(PATIENT, start_us, end_us)
    out: list[dict[str, Any]] = []
    while True:
        rows = await influx.query(f"SELECT * FROM {_M} WHERE {where} ORDER BY time "
                                  f"LIMIT {vitals.PAGE_ROWS} OFFSET {len(out)}", params)
        out += rows
        if len(rows) < vitals.PAGE_ROWS:
            return out


async def old_downsample(influx: InfluxClient, start_us: int, end_us: int) -> list[dict[str, Any]]:
    """The API's previous, unverified downsampling: InfluxDB's GROUP BY over whatever is stored."""
    interval = vitals.choose_interval_s(start_us, end_us, 300)
    aggregates = ", ".join(f"mean({quote_ident(v)}), min({quote_ident(v)}), max({quote_ident(v)})"
                           for v in VITAL_FIELDS)
    where, params = vitals._where(PATIENT, start_us, end_us)
    return await influx.query(f"SELECT {aggregates}, count(\"seq\") FROM {_M} WHERE {where} "
                              f"GROUP BY time({interval}s) fill(none)", params, epoch="u")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=10_000)
    parser.add_argument("--others", type=int, default=90_000)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.readings
    start_us, end_us = T0, T0 + n * 1_000_000

    with tempfile.TemporaryDirectory(prefix="bench-reads-") as folder:
        influx_port, rpc = free_ports(2)
        settings = load_settings(environ={}, state_dir=Path(folder), influx_port=influx_port,
                                 influx_rpc_port=rpc, raw_topic=TOPIC)
        stack = Stack(settings)
        try:
            stack.up(("influxdb",))
            ledger = Ledger(settings.ledger_target)
            t = time.perf_counter()
            seal_all(settings, ledger, n, args.others, args.window)
            print(f"sealed {n} readings of one patient + {args.others} of other devices "
                  f"(ledger only) in windows of {args.window}: {time.perf_counter() - t:.1f} s")
            verifier = ReadVerifier(ledger, TOPIC)
            memo = LeafMemo(capacity=max(n, 100_000))
            memo_verifier = ReadVerifier(ledger, TOPIC, memo=memo)
            memo_bytes: list[float] = []

            async def run() -> dict[str, list[tuple[float, float, float]]]:
                results: dict[str, list[tuple[float, float, float]]] = {}
                async with InfluxClient(settings, timeout_s=120) as influx:
                    rows = await fetch_rows(influx, start_us, end_us)
                    assert len(rows) == n, len(rows)
                    keys = [(DEVICE, int(r["seq"])) for r in rows]
                    tracemalloc.start()  # memory the memo holds: traced while it is filled
                    memo_verifier.verify(rows)  # warm: as after the dashboard's first refresh
                    memo_bytes.append(tracemalloc.get_traced_memory()[0] / max(1, len(memo)))
                    tracemalloc.stop()

                    async def fetch_rebuild() -> Any:
                        return [reading_from_row(r) for r in await fetch_rows(influx, start_us, end_us)]

                    async def fetch_verify() -> Any:
                        verdicts = verifier.verify(await fetch_rows(influx, start_us, end_us))
                        assert all(v.state.value == "sealed" for v in verdicts)
                        return verdicts

                    async def fetch_verify_memo() -> Any:
                        verdicts = memo_verifier.verify(await fetch_rows(influx, start_us, end_us))
                        assert all(v.state.value == "sealed" for v in verdicts)
                        return verdicts

                    async def downsample_memo() -> Any:
                        series = await vitals.downsampled(influx, memo_verifier, PATIENT,
                                                          start_us, end_us, 300)
                        assert sum(p["n"] for p in series["points"]) == n
                        return series

                    async def verify_only() -> Any:
                        return verifier.verify(rows)

                    async def leaves_only() -> Any:
                        return [stored_leaf(r) for r in rows]

                    async def lookup_only() -> Any:
                        found = ledger.locate_many(keys)
                        assert len(found) == n
                        return found

                    async def downsample_old() -> Any:
                        return await old_downsample(influx, start_us, end_us)

                    async def downsample_verified() -> Any:
                        series = await vitals.downsampled(influx, verifier, PATIENT, start_us,
                                                          end_us, 300)
                        assert sum(p["n"] for p in series["points"]) == n
                        return series

                    async def latest_old() -> Any:
                        return await influx.query(f"SELECT * FROM {_M} WHERE \"patient_id\" = "
                                                  "$patient ORDER BY time DESC LIMIT 1",
                                                  {"patient": PATIENT})

                    async def latest_verified() -> Any:
                        found = await vitals.latest_reading(influx, verifier, PATIENT)
                        assert found["latest"]["state"] == "sealed"
                        return found

                    variants: dict[str, Callable[[], Awaitable[Any]]] = {
                        "fetch+rebuild (unverified)": fetch_rebuild,
                        "fetch+verify": fetch_verify,
                        "fetch+verify, warm leaf memo": fetch_verify_memo,
                        "verify only (rows in memory)": verify_only,
                        "  of which leaf recompute": leaves_only,
                        "  of which ledger lookup": lookup_only,
                        "downsample: InfluxDB GROUP BY (unverified)": downsample_old,
                        "downsample: verified, Python": downsample_verified,
                        "downsample: verified, warm leaf memo": downsample_memo,
                        "latest: LIMIT 1 (unverified)": latest_old,
                        "latest: verified": latest_verified,
                    }
                    for _ in range(args.rounds):
                        for name, job in variants.items():
                            w0, c0, i0 = time.perf_counter(), time.process_time(), influx_cpu_s(stack)
                            await job()
                            results.setdefault(name, []).append(
                                (time.perf_counter() - w0, time.process_time() - c0,
                                 influx_cpu_s(stack) - i0))
                return results

            results = asyncio.run(run())
            ledger.close()
        finally:
            stack.down()

    print(f"{n} readings, median of {args.rounds} rounds; CPU = this process (parse, hash, "
          "SQLite) and influxd; per reading in microseconds")
    print(f"{'variant':45} {'wall ms':>9} {'cpu ms':>8} {'influxd ms':>10} "
          f"{'wall us/r':>9} {'cpu us/r':>8}")
    base = None
    for name, samples in results.items():
        wall = statistics.median(s[0] for s in samples)
        cpu = statistics.median(s[1] for s in samples)
        idb = statistics.median(s[2] for s in samples)
        per = n if not name.startswith("latest") else 1
        print(f"{name:45} {wall * 1e3:9.1f} {cpu * 1e3:8.1f} {idb * 1e3:10.1f} "
              f"{wall / per * 1e6:9.1f} {cpu / per * 1e6:8.1f}")
        if name.startswith("fetch+rebuild"):
            base = (wall, cpu)
    assert base is not None
    fetch_verify = results["fetch+verify"]
    vw = statistics.median(s[0] for s in fetch_verify)
    vc = statistics.median(s[1] for s in fetch_verify)
    ds_old = statistics.median(s[0] for s in results["downsample: InfluxDB GROUP BY (unverified)"])
    ds_new = statistics.median(s[0] for s in results["downsample: verified, Python"])
    print(f"ratio verified/unverified raw read: wall {vw / base[0]:.2f}x, CPU {vc / base[1]:.2f}x; "
          f"added cost {(vw - base[0]) / n * 1e6:.1f} us wall, {(vc - base[1]) / n * 1e6:.1f} us CPU "
          "per reading")
    print(f"ratio verified/unverified downsampling: wall {ds_new / ds_old:.1f}x "
          f"({ds_new * 1e3:.0f} ms vs {ds_old * 1e3:.0f} ms)")
    warm = results["fetch+verify, warm leaf memo"]
    mw = statistics.median(s[0] for s in warm)
    mc = statistics.median(s[1] for s in warm)
    print(f"ratio verified (warm leaf memo)/unverified raw read: wall {mw / base[0]:.2f}x, "
          f"CPU {mc / base[1]:.2f}x; added cost {(mc - base[1]) / n * 1e6:.1f} us CPU per reading; "
          f"memo {len(memo)} entries, {memo.hits} hits, {memo.misses} misses, "
          f"{memo_bytes[0]:.0f} bytes traced per entry while filling it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
