"""influxd's CPU per reading point, by what the write looks like: fields and their types, string
lengths, lines per POST, series order within a body, timestamp precision, gzip'd bodies, points
per series per body (issue #14, InfluxDB's share).

    .venv/bin/python bench/bench_influx_points.py [--points 100000] [--rounds 2] [--only NAME ...]
    .venv/bin/python bench/bench_influx_points.py --cold --points 400000 --rounds 3 --only NAME ...
    .venv/bin/python bench/bench_influx_points.py --build-trees BEFORE_TREE AFTER_TREE [--rounds 5]
    .venv/bin/python bench/bench_influx_points.py --queries 20 --points 600000

Starts a private ``influxd`` (InfluxDB 1.x, the local stack's settings: inmem index) per variant
and round on free loopback ports, writes ``--points`` readings of 2,000 devices (5 Hz) in the
readings measurement's shape, and reads influxd's user + system CPU from ``/proc`` before and
after (2 s after the last write, for the WAL's work; with ``--cold``, once influxd is quiet after
snapshotting its cache 1 s after the last write, so every snapshot the writes cause is counted:
compare shapes that way, at several snapshots' worth of points); the writer's CPU to build and encode the
bodies (gzip included) is the bench process's own, measured around that work only. Variants
alternate within each round, so their ratios come from one machine state. Values have the real
shape: integer vitals written as floats (``72.0``), a one-decimal temperature, a 64-hex salt (a
BLAKE2/BLAKE3 digest is incompressible), a 64-hex leaf, a ``p<partition>-<offset>`` window id.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

import httpx

DEVICES = 2000
T0_US = 1_700_000_000_000_000


@dataclass(frozen=True)
class Shape:
    """What one variant writes; the defaults are the stream's writes at db004e2."""

    leaf: bool = True
    window_id: bool = True
    salt: bool = True             # the salt field (derivable from the salt key, and only there)
    salt_b64: bool = False        # the salt's 32 bytes as 43 base64url characters, not 64 hex
    long_floats: bool = False     # random 17-digit floats instead of the devices' values
    int_vitals: bool = False      # the five integer vitals as InfluxDB integers (``72i``)
    body_lines: int = 5000        # lines per POST
    sort: bool = False            # each body sorted by series key (measurement + tags)
    per_series: int = 1           # consecutive readings of one device in a row (1: interleaved)
    precision_us: bool = False    # precision=u and µs timestamps (drops the seq % 1000 digits)
    gzip: bool = False            # Content-Encoding: gzip (the writer pays the compression)
    signed_every: int = 0         # a signed_messages point per this many readings of a device
    signed_readings: bool = True  # ... with its readings as a JSON string field (as at c5b430e)
    sig_inline: bool = False      # key id and signature as fields of the message's first reading
    signed_fields: str = "key_id,sig"  # the message point's fields besides readings (D45: +count)
    data_conf: str = ""           # extra [data] settings of influxd (the stack's: none)
    go_env: str = ""              # influxd's Go runtime settings, "GOGC=400 GOMEMLIMIT=1GiB"
    late_if_true: bool = False    # ``late`` written only when true (absent reads as false)


VARIANTS: dict[str, Shape] = {
    "as stored (db004e2)": Shape(),
    "no leaf": Shape(leaf=False),
    "no leaf, no window_id": Shape(leaf=False, window_id=False),
    "long random floats": Shape(long_floats=True),
    "integer vitals": Shape(int_vitals=True),
    "1,000 lines/POST": Shape(body_lines=1000),
    "20,000 lines/POST": Shape(body_lines=20_000),
    "sorted by series": Shape(sort=True),
    "5 points/series run": Shape(per_series=5),
    "10 points/series run": Shape(per_series=10),
    "no leaf, 10/series run": Shape(leaf=False, per_series=10),
    "precision=u": Shape(precision_us=True),
    "gzip bodies": Shape(gzip=True),
    "no leaf, 20,000/POST": Shape(leaf=False, body_lines=20_000),
    "no leaf, 1,000/POST": Shape(leaf=False, body_lines=1000),
    "no leaf, 2,500/POST": Shape(leaf=False, body_lines=2500),
    "2,500 lines/POST": Shape(body_lines=2500),
    # The stream's writes at c5b430e for devices signing messages of 10 (the row): the
    # readings without leaf, 10 of a device in a row, and one signed_messages point per message.
    "c5b430e, signed 10": Shape(leaf=False, per_series=10, signed_every=10),
    "signed 10, no readings JSON": Shape(leaf=False, per_series=10, signed_every=10,
                                         signed_readings=False),
    "unsigned, 10/series run": Shape(leaf=False, per_series=10),
    "signed 10, D45 (count, last_at)": Shape(leaf=False, per_series=10, signed_every=10,
                                             signed_readings=False,
                                             signed_fields="key_id,sig,count,last_at"),
    "signed 10, sig as 8 ints, key as 2": Shape(leaf=False, per_series=10, signed_every=10,
                                               signed_readings=False,
                                               signed_fields="k0,k1,s0,s1,s2,s3,s4,s5,s6,s7,"
                                                             "count,last_at"),
    "signed 10, sig only": Shape(leaf=False, per_series=10, signed_every=10,
                                 signed_readings=False, signed_fields="sig"),
    "signed 10, count only": Shape(leaf=False, per_series=10, signed_every=10,
                                   signed_readings=False, signed_fields="count"),
    "D45, wal-fsync-delay 100ms": Shape(leaf=False, per_series=10, signed_every=10,
                                        signed_readings=False,
                                        signed_fields="key_id,sig,count,last_at",
                                        data_conf='  wal-fsync-delay = "100ms"\n'),
    "D45, cache snapshot 256m": Shape(leaf=False, per_series=10, signed_every=10,
                                      signed_readings=False,
                                      signed_fields="key_id,sig,count,last_at",
                                      data_conf='  cache-snapshot-memory-size = "256m"\n'),
    # The same two with every cache snapshotted 1 s after the last write (run with --settle 15,
    # so what a bigger cache only defers is counted too).
    "D45, cold 1s": Shape(leaf=False, per_series=10, signed_every=10, signed_readings=False,
                          signed_fields="key_id,sig,count,last_at",
                          data_conf='  cache-snapshot-write-cold-duration = "1s"\n'),
    "D45, snapshot 256m, cold 1s": Shape(
        leaf=False, per_series=10, signed_every=10, signed_readings=False,
        signed_fields="key_id,sig,count,last_at",
        data_conf='  cache-snapshot-memory-size = "256m"\n'
                  '  cache-snapshot-write-cold-duration = "1s"\n'),
    "signed 10, sig on 1st reading": Shape(leaf=False, per_series=10, signed_every=10,
                                           signed_readings=False, sig_inline=True),
    "signed 10, no window_id": Shape(leaf=False, window_id=False, per_series=10,
                                     signed_every=10),
    # influx4: the per-reading strings of the D45 mix (the stream's writes at 55aad29).
    "D45 (a second copy)": Shape(leaf=False, per_series=10, signed_every=10,
                                 signed_readings=False, signed_fields="key_id,sig,count,last_at"),
    "D45, GOGC=200": Shape(leaf=False, per_series=10, signed_every=10, signed_readings=False,
                           signed_fields="key_id,sig,count,last_at", go_env="GOGC=200"),
    "D45, GOGC=400": Shape(leaf=False, per_series=10, signed_every=10, signed_readings=False,
                           signed_fields="key_id,sig,count,last_at", go_env="GOGC=400"),
    "D45, GOGC=800": Shape(leaf=False, per_series=10, signed_every=10, signed_readings=False,
                           signed_fields="key_id,sig,count,last_at", go_env="GOGC=800"),
    "D45, salt base64url": Shape(leaf=False, per_series=10, signed_every=10,
                                 signed_readings=False, signed_fields="key_id,sig,count,last_at",
                                 salt_b64=True),
    "D45, salt base64url, GOGC=400": Shape(leaf=False, per_series=10, signed_every=10,
                                           signed_readings=False,
                                           signed_fields="key_id,sig,count,last_at",
                                           salt_b64=True, go_env="GOGC=400"),
    "D45, GOGC=400, GOMEMLIMIT=512MiB": Shape(
        leaf=False, per_series=10, signed_every=10, signed_readings=False,
        signed_fields="key_id,sig,count,last_at", go_env="GOGC=400 GOMEMLIMIT=512MiB"),
    "D45, GOGC=off, GOMEMLIMIT=1GiB": Shape(
        leaf=False, per_series=10, signed_every=10, signed_readings=False,
        signed_fields="key_id,sig,count,last_at", go_env="GOGC=off GOMEMLIMIT=1GiB"),
    "D45, late only if true": Shape(leaf=False, per_series=10, signed_every=10,
                                    signed_readings=False,
                                    signed_fields="key_id,sig,count,last_at", late_if_true=True),
    "D45, no salt": Shape(leaf=False, salt=False, per_series=10, signed_every=10,
                          signed_readings=False, signed_fields="key_id,sig,count,last_at"),
    "D45, no window_id": Shape(leaf=False, window_id=False, per_series=10, signed_every=10,
                               signed_readings=False, signed_fields="key_id,sig,count,last_at"),
    "D45, no salt, no window_id": Shape(leaf=False, salt=False, window_id=False, per_series=10,
                                        signed_every=10, signed_readings=False,
                                        signed_fields="key_id,sig,count,last_at"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_quiet(pid: int, timeout: float = 60.0, step: float = 0.5,
                quiet_ms: float = 10.0) -> None:
    """Wait until influxd has finished the work the writes left (WAL, cache snapshot): one
    ``step`` in which it spends under ``quiet_ms`` of CPU; a clear error after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = _cpu_s(pid)
    while True:
        time.sleep(step)  # the interval the CPU is measured over, not a guess at readiness
        now = _cpu_s(pid)
        if (now - last) * 1000 < quiet_ms:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"influxd still busy after the writes ({timeout:.0f} s)")
        last = now


def _start(base: str, data_conf: str = "",
           go_env: str = "") -> tuple[subprocess.Popen[bytes], str]:
    port, bind_port = _free_port(), _free_port()
    conf = (f'reporting-disabled = true\nbind-address = "127.0.0.1:{bind_port}"\n'
            f'[meta]\n  dir = "{base}/meta"\n'
            f'[data]\n  dir = "{base}/data"\n  wal-dir = "{base}/wal"\n'
            '  query-log-enabled = false\n  index-version = "inmem"\n' + data_conf +
            '[monitor]\n  store-enabled = false\n'
            f'[http]\n  enabled = true\n  bind-address = "127.0.0.1:{port}"\n'
            '  log-enabled = false\n  max-body-size = 50000000\n'
            '[continuous_queries]\n  enabled = false\n[subscriber]\n  enabled = false\n')
    with open(f"{base}/influxdb.conf", "w") as f:
        f.write(conf)
    env = {k: v for k, v in os.environ.items() if k not in ("GOGC", "GOMEMLIMIT")}
    env.update(item.split("=", 1) for item in go_env.split())
    proc = subprocess.Popen(["influxd", "run", "-config", f"{base}/influxdb.conf"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
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


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _vital(x: float, shape: Shape) -> str:
    if shape.int_vitals:
        return f"{int(x)}i"
    return repr(x) if shape.long_floats else repr(float(int(x)))


def lines(n: int, shape: Shape, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` readings points, as ``(series key, line)``, in the order the stream writes them:
    device after device, one reading each, then the next reading of every device
    (``per_series`` > 1: that many readings of a device in a row)."""
    out = []
    run = shape.per_series
    for i in range(n):
        block, k = divmod(i, DEVICES * run)
        device, within = divmod(k, run)
        seq = block * run + within
        ts_us = T0_US + seq * 200_000
        digest = hashlib.blake2b(i.to_bytes(8, "big"), digest_size=64).hexdigest()
        temp = 36.5 + rng.random()
        key = f"readings,device_id=dev-{device:05d},patient_id=pat-{device:05d}"
        temp_s = repr(temp) if shape.long_floats else repr(round(temp, 1))
        line = (f"{key} hr={_vital(60 + rng.random() * 40, shape)},"
                f"spo2={_vital(95 + rng.random() * 4, shape)},"
                f"rr={_vital(12 + rng.random() * 6, shape)},temp_c={temp_s},")
        line += (f"sys={_vital(110 + rng.random() * 20, shape)},"
                 f"dia={_vital(70 + rng.random() * 10, shape)},seq={seq}i,")
        if shape.salt and shape.salt_b64:
            line += f'salt="{_b64(bytes.fromhex(digest[:64]))}",'
        elif shape.salt:
            line += f'salt="{digest[:64]}",'
        if shape.leaf:
            line += f'leaf="{digest[64:]}",'
        if shape.window_id:
            line += f'window_id="p0-{(i // 10_000) * 10_000}",'
        stamp = ts_us if shape.precision_us else ts_us * 1000 + seq % 1000
        line += "" if shape.late_if_true else "late=false,"
        line += f"received_us={ts_us + 5000}i,sig_at={ts_us * 1000}i {stamp}"
        if shape.signed_every and seq % shape.signed_every == 0:
            signed_key, signed_line = _signed_line(device, seq, ts_us, shape, rng)
            if shape.sig_inline:
                line = line.replace(" hr=", " " + signed_line.split(" ")[1] + ",hr=", 1)
            else:
                out.append((signed_key, signed_line))
        out.append((key, line))
    return out


def _signed_line(device: int, seq: int, ts_us: int, shape: Shape,
                 rng: random.Random) -> tuple[str, str]:
    """A ``signed_messages`` point as ``signed_message_line`` writes it: key id, an 86-character
    signature and (``signed_readings``) the message's readings as the JSON the device sent,
    escaped for a line-protocol string."""
    key = f"signed_messages,device_id=dev-{device:05d}"
    sig = hashlib.sha512(f"{device}/{seq}".encode()).hexdigest()[:86]
    values = {"key_id": f'"{sig[:32]}"', "sig": f'"{sig}"', "count": f"{shape.signed_every}i",
              "last_at": f"{(ts_us + (shape.signed_every - 1) * 200_000) * 1000 + seq % 1000}i"}
    raw = hashlib.sha512(f"{device}/{seq}".encode()).digest() + hashlib.sha256(
        f"{device}".encode()).digest()[:16]
    for k in range(10):
        values[f"s{k}" if k < 8 else f"k{k - 8}"] = (
            f"{int.from_bytes(raw[k * 8:k * 8 + 8], 'big', signed=True)}i")
    line = f"{key} " + ",".join(f"{name}={values[name]}"
                                for name in shape.signed_fields.split(","))
    if shape.signed_readings:
        readings = ",".join(
            f'{{"device_id":"dev-{device:05d}","patient_id":"pat-{device:05d}","seq":{seq + k},'
            f'"ts_us":{ts_us + k * 200_000},"vitals":{{"hr":{rng.randint(55, 110)},'
            f'"spo2":{rng.randint(90, 100)},"rr":{rng.randint(10, 25)},'
            f'"temp_c":{round(rng.uniform(36, 38.5), 1)},"sys":{rng.randint(100, 140)},'
            f'"dia":{rng.randint(60, 90)}}}}}' for k in range(shape.signed_every))
        line += ',readings="[' + readings.replace('"', '\\"') + ']"'
    return key, f"{line} {ts_us * 1000 + seq % 1000}"


def bodies(points: list[tuple[str, str]], shape: Shape) -> list[bytes]:
    """The POST bodies: ``body_lines`` lines each, sorted by series key and gzip'd if asked."""
    out = []
    for i in range(0, len(points), shape.body_lines):
        chunk = points[i:i + shape.body_lines]
        if shape.sort:
            chunk = sorted(chunk, key=lambda kv: kv[0])
        body = "\n".join(line for _, line in chunk).encode()
        out.append(gzip.compress(body, compresslevel=1) if shape.gzip else body)
    return out


SETTLE_S = 2.0  # influxd's CPU is read this long after the last write (--settle)
# --cold: every variant's cache is snapshotted to TSM 1 s after its last write, and influxd's CPU
# is read once it is quiet after that, so each run pays for all the snapshots its bytes cause.
# Without it a run of 100,000 readings (~25 MB of cache, the default snapshot size) pays for one
# snapshot or none depending on a few bytes per point (influx4's finding).
COLD_CONF = '  cache-snapshot-write-cold-duration = "1s"\n'
COLD = False
LAST_PEAK_MB = [0.0]  # influxd's VmHWM in the last run, MB


def one_run(points: list[tuple[str, str]], shape: Shape) -> tuple[float, float, int]:
    """influxd's CPU µs per point, the writer's CPU µs per point to build the bodies, and the
    bytes sent per point, for writing ``points`` into a fresh server."""
    base = tempfile.mkdtemp(prefix="bench-influx-points-")
    proc, url = _start(base, shape.data_conf + (COLD_CONF if COLD else ""), shape.go_env)
    headers = {"Content-Encoding": "gzip"} if shape.gzip else {}
    params = {"db": "bench", "precision": "u" if shape.precision_us else "ns"}
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            writer0 = time.process_time()
            encoded = bodies(points, shape)
            writer_s = time.process_time() - writer0
            sent = sum(map(len, encoded))
            before = _cpu_s(proc.pid)
            for body in encoded:
                response = client.post("/write", params=params, content=body, headers=headers)
                if response.status_code != 204:
                    raise SystemExit(f"write refused: {response.status_code} {response.text}")
            time.sleep(SETTLE_S)  # the WAL's and the cache's work after the last write
            if COLD:
                _wait_quiet(proc.pid)  # the cold snapshot (1 s after the last write) is done
            count = client.post("/query", data={"db": "bench",
                                                "q": "SELECT count(seq) FROM readings"}).json()
            stored = count["results"][0]["series"][0]["values"][0][1]
            readings = sum(1 for key, _ in points if key.startswith("readings,"))
            if stored != readings:
                raise SystemExit(f"{stored} points stored of {readings}")
            if COLD and not any(name.endswith(".tsm") for _d, _s, names in os.walk(base)
                                for name in names):
                raise SystemExit("--cold: no TSM file after the settle (no snapshot taken)")
            with open(f"/proc/{proc.pid}/status") as f:  # influxd's peak resident memory
                LAST_PEAK_MB[0] = next(int(x.split()[1]) for x in f
                                       if x.startswith("VmHWM:")) / 1024
            # Per reading point: a signed_messages point's cost is charged to its readings.
            return ((_cpu_s(proc.pid) - before) / readings * 1e6,
                    writer_s / readings * 1e6, sent // readings)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)


# Run by each tree's own interpreter: its vitalchain.storage.readings formats 5,000 readings of
# 2,000 devices (a receipt writer's batch at 10,000/s is ~1,000); prints process CPU µs/reading.
_BUILD = """
import inspect, os, random, time
from vitalchain.storage import readings as R
rng = random.Random(1)
rows, signed = [], []
for m in range(500):  # 500 signed messages of 10 readings (devices batching 10, as at the row)
    device, sent, kept = f"dev-{m:05d}", [], []
    for k in range(10):
        c = {"device_id": device, "patient_id": f"pat-{m:05d}", "seq": 12345 + k,
             "ts_us": 1_764_000_000_000_000 + k * 200_000,
             "vitals": {"hr": rng.randint(55, 110), "spo2": rng.randint(90, 100),
                        "rr": rng.randint(10, 25), "temp_c": round(rng.uniform(36, 38.5), 1),
                        "sys": rng.randint(100, 140), "dia": rng.randint(60, 90)}}
        sent.append(dict(c))
        c["salt"] = os.urandom(32).hex()
        kept.append(c)
        rows.append((c, os.urandom(32), "p0-123456", False, 1_764_000_000_100_000 + k,
                     1_764_000_000_000_000_000 + 12345 % 1000))
    signed.append((device, {"key_id": "0123456789abcdef", "sig": "A" * 86,
                            "at": [sent[0]["ts_us"], sent[0]["seq"]], "readings": sent}, kept))
line = getattr(R, "signed_message_line", None) or (
    lambda d, s: R.signed_message_point(d, s).to_line())
takes_kept = len(inspect.signature(line).parameters) > 2
best_r = best_s = 1e9
for _ in range(7):
    t0 = time.process_time()
    R.reading_lines(rows)
    t1 = time.process_time()
    for d, s, kept in signed:
        line(d, s, kept) if takes_kept else line(d, s)
    t2 = time.process_time()
    best_r, best_s = min(best_r, t1 - t0), min(best_s, t2 - t1)
print(best_r / len(rows) * 1e6, best_s / len(signed) * 1e6)
"""


def build_cpu(trees: list[str], rounds: int) -> None:
    """The stream-side CPU to format the lines, each tree by its own venv, alternating."""
    results: dict[str, list[tuple[float, float]]] = {tree: [] for tree in trees}
    for round_no in range(rounds):
        for tree in trees:
            out = subprocess.run([f"{tree}/.venv/bin/python", "-c", _BUILD], cwd=tree,
                                 check=True, capture_output=True, text=True).stdout.split()
            results[tree].append((float(out[0]), float(out[1])))
            print(f"round {round_no + 1} {tree}: reading_lines {float(out[0]):.2f} µs/reading, "
                  f"signed message line {float(out[1]):.2f} µs/message", flush=True)
    print(f"\n{'tree':<36} {'µs/reading (min of rounds)':>28} {'µs/signed message':>18}")
    for tree, values in results.items():
        print(f"{tree:<36} {min(v[0] for v in values):28.2f} {min(v[1] for v in values):18.2f}")


def _poll_queries(client: httpx.Client, sample: int) -> None:
    """One round of what bench_pipeline.py's pollers ask InfluxDB every 0.2 s: the window
    poller's scan of ``windows``, the clinician API's newest 5 points of each sampled patient
    (``api/vitals.py`` latest_readings), and the newest seq of each sampled device."""
    who = " OR ".join(f"\"patient_id\" = 'pat-{d:05d}'" for d in range(sample))
    names = "|".join(f"dev-{d:05d}" for d in range(sample))
    for q in ("SELECT size, window_id FROM windows",
              f"SELECT * FROM readings WHERE ({who}) GROUP BY \"patient_id\" "
              "ORDER BY time DESC LIMIT 5",
              f"SELECT last(seq) AS seq FROM readings WHERE device_id =~ /^({names})$/ "
              "GROUP BY device_id"):
        response = client.post("/query", data={"db": "bench", "q": q, "epoch": "ns"})
        response.raise_for_status()


def query_cpu(points: list[tuple[str, str]], seconds: float, sample: int,
              windows: int) -> None:
    """influxd's CPU for the pipeline bench's polling, on a store holding ``points``: idle for
    ``seconds``, then polled every 0.2 s for ``seconds`` (ms of CPU per second each)."""
    base = tempfile.mkdtemp(prefix="bench-influx-queries-")
    proc, url = _start(base)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for body in bodies(points, Shape()):
                client.post("/write", params={"db": "bench"}, content=body).raise_for_status()
            window_lines = "\n".join(
                f"windows,partition={w % 8},window_id=p{w % 8}-{w * 1000} root=\"{'ab' * 32}\","
                f"size=2500i,start_us={T0_US + w * 250_000}i,end_us={T0_US + w * 250_000}i,"
                f"first_offset={w * 1000}i,last_offset={w * 1000 + 50}i,log_index={w}i,"
                f"status=\"sealed\" {(T0_US + w * 250_000) * 1000}" for w in range(windows))
            client.post("/write", params={"db": "bench"},
                        content=window_lines.encode()).raise_for_status()
            _wait_quiet(proc.pid)
            c0 = _cpu_s(proc.pid)
            time.sleep(seconds)  # the idle measurement's window
            idle = (_cpu_s(proc.pid) - c0) / seconds * 1000
            c0, rounds, t_end = _cpu_s(proc.pid), 0, time.monotonic() + seconds
            while time.monotonic() < t_end:
                began = time.monotonic()
                _poll_queries(client, sample)
                rounds += 1
                time.sleep(max(0.0, 0.2 - (time.monotonic() - began)))
            polled = (_cpu_s(proc.pid) - c0) / seconds * 1000
        print(f"{len(points)} points, {windows} windows, {sample} sampled devices: influxd idle "
              f"{idle:.1f} ms CPU/s, polled {polled:.1f} ms CPU/s ({rounds} rounds of 3 "
              f"queries in {seconds:.0f} s; {(polled - idle) * seconds / max(rounds, 1):.2f} ms per "
              "round)")
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--build-trees", nargs="+", metavar="TREE",
                        help="instead: the stream-side CPU to build the lines in these trees")
    parser.add_argument("--queries", type=float, metavar="SECONDS",
                        help="instead: influxd's CPU for the pipeline bench's polling queries")
    parser.add_argument("--sample", type=int, default=20, help="--queries: sampled devices")
    parser.add_argument("--windows", type=int, default=240, help="--queries: window points")
    parser.add_argument("--settle", type=float, default=SETTLE_S,
                        help="seconds after the last write before influxd's CPU is read")
    parser.add_argument("--cold", action="store_true",
                        help="snapshot every cache 1 s after the last write and count it")
    args = parser.parse_args()
    globals()["SETTLE_S"] = max(args.settle, 3.0) if args.cold else args.settle
    globals()["COLD"] = args.cold
    if args.queries:
        query_cpu(lines(args.points, Shape(leaf=False, per_series=10), random.Random(7)),
                  args.queries, args.sample, args.windows)
        return 0
    if args.build_trees:
        build_cpu(args.build_trees, args.rounds)
        return 0
    if shutil.which("influxd") is None:
        raise SystemExit("influxd not found: `make setup` installs it")
    variants = {k: v for k, v in VARIANTS.items() if not args.only or k in args.only}
    data = {name: lines(args.points, shape, random.Random(7))
            for name, shape in variants.items()}
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in variants}
    names = list(variants)
    for round_no in range(args.rounds):
        # Each round starts with another variant, so no variant always runs first (the first
        # run of a round measured slower in influx4's runs: position, not shape).
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            shape = variants[name]
            result = one_run(data[name], shape)
            results[name].append(result)
            print(f"round {round_no + 1} {name:<24} influxd {result[0]:6.1f} µs/point, writer "
                  f"{result[1]:5.2f} µs/point, {result[2]} B/point, influxd peak RSS "
                  f"{LAST_PEAK_MB[0]:.0f} MB", flush=True)
    base = "as stored (db004e2)"
    base_mean = (sum(r[0] for r in results[base]) / len(results[base])
                 if base in results else None)
    print(f"\n{'variant':<24} {'influxd µs/point (rounds)':>28} {'mean':>6} {'ratio':>6} "
          f"{'writer µs':>9} {'B/point':>7}")
    for name, values in results.items():
        mean = sum(v[0] for v in values) / len(values)
        ratio = f"{mean / base_mean:.2f}" if base_mean else "-"
        writer = sum(v[1] for v in values) / len(values)
        print(f"{name:<24} {', '.join(f'{v[0]:.1f}' for v in values):>28} {mean:6.1f} "
              f"{ratio:>6} {writer:9.2f} {values[0][2]:7d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
