"""influxd's CPU per reading point, with and without the per-reading strings ``leaf`` and
``window_id``: what the readings point's shape costs the database (issue #14, InfluxDB's share).

    .venv/bin/python bench/bench_influx_points.py [--points 200000] [--rounds 2]

Starts a private ``influxd`` (InfluxDB 1.x, the local stack's settings: inmem index) per variant
and round on free loopback ports, writes ``--points`` readings of 2,000 devices in the readings
measurement's shape (tags device_id and patient_id; the six vitals, seq, salt, late,
received_us, sig_at; with or without ``leaf`` and ``window_id``) in bodies of 5,000 lines, and
reads influxd's user + system CPU from ``/proc`` before and after (2 s after the last write, for
the WAL's work). Variants alternate within each round, so their ratio comes from one machine
state. Synthetic values with the real shape: random vitals, a random 64-hex leaf (a BLAKE3
digest is incompressible), a 32-hex salt.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time

import httpx

DEVICES = 2000
BODY_LINES = 5000
T0_US = 1_700_000_000_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(base: str) -> tuple[subprocess.Popen[bytes], str]:
    port, bind_port = _free_port(), _free_port()
    conf = (f'reporting-disabled = true\nbind-address = "127.0.0.1:{bind_port}"\n'
            f'[meta]\n  dir = "{base}/meta"\n'
            f'[data]\n  dir = "{base}/data"\n  wal-dir = "{base}/wal"\n'
            '  query-log-enabled = false\n  index-version = "inmem"\n'
            '[monitor]\n  store-enabled = false\n'
            f'[http]\n  enabled = true\n  bind-address = "127.0.0.1:{port}"\n'
            '  log-enabled = false\n  max-body-size = 50000000\n'
            '[continuous_queries]\n  enabled = false\n[subscriber]\n  enabled = false\n')
    with open(f"{base}/influxdb.conf", "w") as f:
        f.write(conf)
    proc = subprocess.Popen(["influxd", "run", "-config", f"{base}/influxdb.conf"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/ping").status_code == 204:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("influxd did not answer /ping within 30 s")
        time.sleep(0.1)
    httpx.post(url + "/query", data={"q": "CREATE DATABASE bench"}).raise_for_status()
    return proc, url


def lines(n: int, with_leaf_and_window: bool, rng: random.Random) -> list[str]:
    """``n`` readings points in the stored shape (vitalchain/storage/readings.py)."""
    out = []
    for i in range(n):
        device, seq = i % DEVICES, i // DEVICES
        ts_us = T0_US + seq * 200_000
        leaf = hashlib.blake2b(i.to_bytes(8, "big"), digest_size=32).hexdigest()
        line = (f"readings,device_id=dev-{device:05d},patient_id=pat-{device:05d} "
                f"hr={60 + rng.random() * 40!r},spo2={95 + rng.random() * 4!r},"
                f"rr={12 + rng.random() * 6!r},temp_c={36.5 + rng.random()!r},"
                f"sys={110 + rng.random() * 20!r},dia={70 + rng.random() * 10!r},seq={seq}i,"
                f'salt="{leaf[:32]}",')
        if with_leaf_and_window:
            line += f'leaf="{leaf}",window_id="w-0-{seq // 10}",'
        line += (f"late=false,received_us={ts_us + 5000}i,sig_at={ts_us * 1000}i "
                 f"{ts_us * 1000 + seq % 1000}")
        out.append(line)
    return out


def one_run(points: list[str]) -> float:
    """influxd's CPU µs per point for writing ``points`` into a fresh server."""
    base = tempfile.mkdtemp(prefix="bench-influx-points-")
    proc, url = _start(base)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            before = _cpu_s(proc.pid)
            for i in range(0, len(points), BODY_LINES):
                body = "\n".join(points[i:i + BODY_LINES]).encode()
                response = client.post("/write", params={"db": "bench", "precision": "ns"},
                                       content=body)
                if response.status_code != 204:
                    raise SystemExit(f"write refused: {response.status_code} {response.text}")
            time.sleep(2.0)  # the WAL's and the cache's work after the last write
            return (_cpu_s(proc.pid) - before) / len(points) * 1e6
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("influxd") is None:
        raise SystemExit("influxd not found: `make setup` installs it")
    variants = {"as stored (leaf, window_id)": True, "without leaf and window_id": False}
    data = {name: lines(args.points, flag, random.Random(7)) for name, flag in variants.items()}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for round_no in range(args.rounds):
        for name in variants:
            us = one_run(data[name])
            results[name].append(us)
            print(f"round {round_no + 1} {name:<28} {us:6.1f} µs CPU of influxd per point",
                  flush=True)
    print(f"\n{'variant':<28} {'µs/point (each round)':>24}")
    for name, values in results.items():
        print(f"{name:<28} {', '.join(f'{v:.1f}' for v in values):>24}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
