"""Where influxd spends its CPU while it takes one of ``bench_influx_points.py``'s write shapes:
Go's own CPU profile (``/debug/pprof/profile``, on by default in InfluxDB 1.x), read here without
the ``go`` tool (issue #14, InfluxDB's share).

    .venv/bin/python bench/influxd_pprof.py --only "signed 10, D45 (count, last_at)" \\
        [--points 400000] [--top 40] [--focus SUBSTRING]

Starts a private ``influxd`` (the bench's settings), asks it for a CPU profile lasting while
``--points`` readings of the shape are written (the writes repeat until the profile ends, each
pass into a fresh database so every pass is new points), then prints the flat and cumulative
top of the profile by Go function, and for ``--focus`` the callers of matching functions.

The profile is a gzip'd ``profile.proto`` (github.com/google/pprof, proto/profile.proto); the
few messages needed (Sample, Location, Line, Function, the string table) are decoded by hand.
"""

from __future__ import annotations

import argparse
import gzip
import random
import shutil
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_influx_points as B


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):  # type: ignore[no-untyped-def]
    """(field number, wire type, value) of one protobuf message; value is an int or bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 1:
            value, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wire == 5:
            value, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, wire, value


def _ints(wire: int, value: int | bytes) -> list[int]:
    """A repeated integer field, packed or not."""
    if wire == 0:
        return [int(value)]  # type: ignore[arg-type]
    out, i, buf = [], 0, value
    while i < len(buf):  # type: ignore[arg-type]
        v, i = _varint(buf, i)  # type: ignore[arg-type]
        out.append(v)
    return out


def decode(raw: bytes) -> list[tuple[list[str], int]]:
    """The profile's samples as (stack of function names, innermost first; CPU nanoseconds)."""
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    strings: list[str] = []
    samples, locations, functions = [], {}, {}
    for number, _wire, value in _fields(data):
        if number == 2:
            locs, vals = [], []
            for n2, w2, v2 in _fields(value):  # type: ignore[arg-type]
                if n2 == 1:
                    locs += _ints(w2, v2)
                elif n2 == 2:
                    vals += _ints(w2, v2)
            samples.append((locs, vals[-1]))
        elif number == 4:
            loc_id, funcs = 0, []
            for n2, _w2, v2 in _fields(value):  # type: ignore[arg-type]
                if n2 == 1:
                    loc_id = v2
                elif n2 == 4:
                    funcs += [v3 for n3, _w3, v3 in _fields(v2) if n3 == 1]  # type: ignore[arg-type]
            locations[loc_id] = funcs
        elif number == 5:
            f = {n2: v2 for n2, _w2, v2 in _fields(value)}  # type: ignore[arg-type]
            functions[f.get(1, 0)] = f.get(2, 0)
        elif number == 6:
            strings.append(value.decode())  # type: ignore[union-attr]
    out = []
    for locs, ns in samples:
        stack = [strings[functions[f]] for loc in locs for f in locations.get(loc, [])]
        out.append((stack, ns))
    return out


# Parts of influxd's write path, by a function somewhere on the stack (a stack counts in every
# part it matches, so the shares overlap: the collector's assists run inside the others).
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("HTTP handler goroutine (reads the body, parses)", ("httpd.(*Handler).serveWrite",)),
    ("shard writes (coordinator goroutines: validation, cache, WAL)",
     ("tsdb.(*Shard).WritePoints",)),
    ("line protocol parsing", ("models.ParsePointsWithPrecision",)),
    ("series and field validation", ("tsdb.(*Shard).validateSeriesAndFields",)),
    ("cache writes", ("tsm1.(*Cache).WriteMulti",)),
    ("WAL writes", ("tsm1.(*WAL).WriteMulti",)),
    ("cache snapshots and compactions", ("compactCache", "tsm1.(*Compactor)",
                                         "cacheKeyIterator", "WriteSnapshot")),
    ("collector: background marking", ("runtime.gcBgMarkWorker",)),
    ("allocation (mallocgc, assists included)", ("runtime.mallocgc",)),
)


def parts(samples: list[tuple[list[str], int]]) -> None:
    """The share of each of :data:`PARTS` in the profile."""
    total = sum(ns for _, ns in samples) or 1
    print("\nparts (overlapping):")
    for label, needles in PARTS:
        ns = sum(n for stack, n in samples
                 if any(needle in name for name in stack for needle in needles))
        print(f"  {ns / total * 100:5.1f}%  {label}")


def report(samples: list[tuple[list[str], int]], top: int, focus: list[str]) -> None:
    total = sum(ns for _, ns in samples) or 1
    parts(samples)
    flat: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    for stack, ns in samples:
        if stack:
            flat[stack[0]] += ns
        for name in set(stack):
            cum[name] += ns
    print(f"total {total / 1e9:.2f} s CPU in {len(samples)} stacks")
    print("\nflat:")
    for name, ns in flat.most_common(top):
        print(f"  {ns / total * 100:5.1f}%  {name}")
    print("\ncumulative:")
    for name, ns in cum.most_common(top):
        print(f"  {ns / total * 100:5.1f}%  {name}")
    for word in focus:
        callers: Counter[str] = Counter()
        for stack, ns in samples:
            for k, name in enumerate(stack):
                if word in name:
                    callers[" <- ".join(stack[k:k + 4])] += ns
                    break
        print(f"\n{word}: its first match and 3 callers")
        for chain, ns in callers.most_common(top):
            print(f"  {ns / total * 100:5.1f}%  {chain}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", required=True, help="a variant of bench_influx_points.py")
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--focus", nargs="*", default=[])
    parser.add_argument("--save", help="also write the raw profile here")
    args = parser.parse_args()
    shape = B.VARIANTS[args.only]
    encoded = B.bodies(B.lines(args.points, shape, random.Random(7)), shape)
    base = tempfile.mkdtemp(prefix="bench-influxd-pprof-")
    proc, url = B._start(base, shape.data_conf, shape.go_env)
    got: dict[str, bytes] = {}

    def profile() -> None:
        got["raw"] = httpx.get(f"{url}/debug/pprof/profile", params={"seconds": args.seconds},
                               timeout=args.seconds + 60).content

    try:
        thread = threading.Thread(target=profile)
        thread.start()
        params = {"precision": "u" if shape.precision_us else "ns"}
        with httpx.Client(base_url=url, timeout=60) as client:
            passes = 0
            while thread.is_alive():
                db = f"bench{passes}"
                client.post("/query", data={"q": f"CREATE DATABASE {db}"}).raise_for_status()
                for body in encoded:
                    if not thread.is_alive():
                        break
                    client.post("/write", params={**params, "db": db},
                                content=body).raise_for_status()
                passes += 1
        thread.join()
        print(f"{args.only}: {passes} passes of {args.points} readings during the profile")
        if args.save:
            Path(args.save).write_bytes(got["raw"])
        report(decode(got["raw"]), args.top, args.focus)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
