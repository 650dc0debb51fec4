"""The single sequencer: how many windows per second the ledger appends, on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_sequencer.py                     # both backends, sizes 10,100,1000
    .venv/bin/python bench/bench_sequencer.py --backends postgresql --appenders 1,4
    .venv/bin/python bench/bench_sequencer.py --backends postgresql,postgresql-serializable

Every window of every stream worker goes through :meth:`Ledger.append_window`, one at a time per
ledger (SQLite: the file's write lock; PostgreSQL: the ledger's advisory lock): the one point of
the design that does not scale out with partitions and workers. This bench measures it alone,
without Kafka or InfluxDB: ``--appenders`` processes (each its own partition, as stream workers
are) append pre-built windows of ``--sizes`` readings as fast as they can; the rate is windows
(and reading index rows) appended per second of wall clock, from a common start to the last
commit. PostgreSQL is a private server the stack starts in a temporary folder (durable commits:
``fsync`` and ``synchronous_commit`` on, as a default server); SQLite is a WAL file with
``synchronous=FULL``, as the ledger opens it. docs/ARCHITECTURE.md turns the figures into the
readings/s and devices the design carries before the sequencer is the limit.

``postgresql-serializable`` is the alternative the design did not take (docs/DECISIONS.md D25):
no advisory lock, each append a SERIALIZABLE transaction retried when PostgreSQL aborts it
(serialization failure, or two appenders taking the same log index); the retries are counted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitalchain.app.stack.ports import free_port
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import load_settings
from vitalchain.core.integrity import build_window_header, canonical_reading, reading_leaf_hash
from vitalchain.storage.ledger import Ledger, ReadingIndexRow

KEY = bytes(32)
T0 = 1_750_000_000_000_000


def windows_of(partition: int, count: int, size: int) -> list[tuple[dict, list[bytes], list[ReadingIndexRow]]]:
    """``count`` consecutive windows of ``size`` readings of partition ``partition``."""
    out = []
    for w in range(count):
        readings = [canonical_reading({"device_id": f"p{partition}-d{i % 50}", "patient_id": "p",
                                       "seq": w * size + i, "ts_us": T0 + (w * size + i) * 1000,
                                       "vitals": {"hr": 70, "spo2": 97, "rr": 14, "temp_c": 36.6,
                                                  "sys": 120, "dia": 80}}, KEY) for i in range(size)]
        leaves = [reading_leaf_hash(r) for r in readings]
        header = build_window_header(readings, partition=partition, first_offset=w * size,
                                     last_offset=w * size + size - 1, salt_key_id="k", leaf_hashes=leaves)
        rows = [ReadingIndexRow(r["device_id"], r["seq"], r["ts_us"], i, leaf)
                for i, (r, leaf) in enumerate(zip(readings, leaves, strict=True))]
        out.append((header, leaves, rows))
    return out


def _serializable_instead_of_the_lock() -> tuple[type[Exception], ...]:
    """Make this process's ledger writes SERIALIZABLE transactions without the advisory lock."""
    import psycopg

    from vitalchain.storage.sqldb import PostgresDb

    def begin(self: PostgresDb, lock_key: int) -> None:
        self._db.execute(b"BEGIN ISOLATION LEVEL SERIALIZABLE")

    PostgresDb._begin_write = begin  # type: ignore[method-assign]
    return (psycopg.errors.SerializationFailure, psycopg.errors.UniqueViolation,
            psycopg.errors.DeadlockDetected)


def appender(target: str, partition: int, count: int, size: int, ready: mp.Barrier,
             done: mp.Queue, serializable: bool = False) -> None:
    batch = windows_of(partition, count, size)
    ledger = Ledger(target)
    retry_on = _serializable_instead_of_the_lock() if serializable else ()
    retries = 0
    ready.wait()
    for header, leaves, rows in batch:
        while True:
            try:
                ledger.append_window("raw", partition, header, leaves, rows, idle_cut=False)
                break
            except retry_on:
                retries += 1
    done.put((time.perf_counter(), retries))
    ledger.close()


def measure(target: str, appenders: int, count: int, size: int,
            serializable: bool = False) -> tuple[float, int]:
    """Windows appended per second by ``appenders`` processes of ``count`` windows each, and
    how many appends were retried."""
    Ledger(target).close()
    ready = mp.Barrier(appenders + 1)
    done: mp.Queue = mp.Queue()
    procs = [mp.Process(target=appender, args=(target, p, count, size, ready, done, serializable))
             for p in range(appenders)]
    for p in procs:
        p.start()
    ready.wait()
    start = time.perf_counter()
    finished = [done.get(timeout=600) for _ in procs]
    ends = [end for end, _ in finished]
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise RuntimeError(f"an appender failed (exit {p.exitcode})")
    with Ledger(target) as ledger:
        assert ledger.log_size() == appenders * count
        assert [w.log_index for w in ledger.windows()] == list(range(appenders * count))
    return appenders * count / (max(ends) - start), sum(r for _, r in finished)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--sizes", default="10,100,1000", help="readings per window")
    parser.add_argument("--appenders", default="1,2,4", help="concurrent appending processes")
    parser.add_argument("--readings", type=int, default=20000,
                        help="readings per appender and configuration (windows = readings / size, at most 400)")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    sizes = [int(x) for x in args.sizes.split(",")]
    appenders = [int(x) for x in args.appenders.split(",")]
    results: list[tuple[str, int, int, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sequencer-") as folder:
        url = f"postgresql://vitalchain@127.0.0.1:{free_port()}/postgres"
        stack = Stack(load_settings(environ={}, state_dir=Path(folder), ledger_url=url))
        try:
            if any(b.startswith("postgresql") for b in backends):
                stack.up(("postgres",))
            n = 0
            for backend in backends:
                for size in sizes:
                    for k in appenders:
                        n += 1
                        if backend.startswith("postgresql"):
                            import psycopg

                            with psycopg.connect(url, autocommit=True) as conn:
                                conn.execute(f"CREATE DATABASE b{n}")
                            target = url.rsplit("/", 1)[0] + f"/b{n}"
                        else:
                            target = str(Path(folder) / f"b{n}.sqlite")
                        count = max(5, min(400, args.readings // size))
                        rate, retries = measure(target, k, count, size, backend.endswith("-serializable"))
                        results.append((backend, size, k, rate, retries))
                        print(f"{backend:<10} size {size:>5} appenders {k}: {rate:8.1f} windows/s "
                              f"= {rate * size:10.0f} readings/s, {retries} retries", flush=True)
        finally:
            stack.down()
    print()
    print(f"{'backend':<23} {'size':>5} {'appenders':>9} {'windows/s':>10} {'readings/s':>11} {'retries':>8}")
    for backend, size, k, rate, retries in results:
        print(f"{backend:<23} {size:>5} {k:>9} {rate:>10.1f} {rate * size:>11.0f} {retries:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
