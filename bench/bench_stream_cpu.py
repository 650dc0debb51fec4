"""The stream worker's CPU per reading, without the services: records -> windows -> the ledger.

    .venv/bin/python bench/bench_stream_cpu.py [--devices 2000] [--readings 40000] [--rounds 5]
        [--history 20] [--batch 10] [--signed] [--lines] [--profile] [--parts]
        [--compare /path/to/other/worktree ...]

What it runs is the stream's own per-reading path, exactly as ``ingest/processor.py`` drives it:
``PartitionWindower.offer`` on the raw topic's record bytes (as the bridge writes them: parse,
checks, record hash, salt, canonical reading, leaf, dedup against the open window, the cut windows
and the ledger), and for every window it cuts what the sealer does in the ledger
(``Ledger.append_window`` with the reading index rows) and ``mark_sealed``.  Not included: Faust,
the Kafka consumer, InfluxDB (their CPU is in the pipeline bench, ``bench/bench_pipeline.py``).

The ledger is a real SQLite file that already holds ``--history`` sealed readings per device
(so dedup queries hit a populated index, as in a long run); the fed readings follow them.

``--compare TREE`` runs this same script with ``TREE/.venv/bin/python`` (another worktree with its
own editable install, e.g. the branch before a change) in a child process, round by round
interleaved with this tree (A B A B ...), so both are measured in one run on a noisy machine.
Figures: ``time.process_time()`` of the feeding loop, CPU µs per reading, median over rounds.
Each tree runs with its stream worker's collector pace (``ingest/gcpace.py`` where it has one:
the garbage collector's work is part of the worker's CPU per reading).
``--parts`` times the steps of ``offer`` one by one instead (best of ``--rounds``, per tree).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from compare_trees import tree_summary  # same folder: run as a script

KEY = bytes(range(32))
T0 = 1_767_225_600_000_000
WINDOW_US = 2_000_000


def batched_records() -> bool:
    """Whether this tree's stream reads record version 2 (one record per MQTT message)."""
    return importlib.util.find_spec("vitalchain.core.payload.record") is not None


def records(devices: int, count: int, first_seq: int, rate_hz: float, seed: int,
            batch: int = 1, signed: bool = False) -> list[bytes]:
    """Raw-topic values as this tree's bridge writes them, devices interleaved in time order:
    with ``batch`` > 1 and a tree that has record version 2, one record per device message of
    ``batch`` readings; otherwise one record per reading (version 1, what older bridges wrote)."""
    rng = random.Random(seed)
    step = round(1_000_000 / rate_hz)
    readings = []
    for i in range(count):
        d, k = i % devices, i // devices
        ts = T0 + (first_seq + k) * step + d
        readings.append({"device_id": f"wearable-{d:05d}", "patient_id": f"patient-{d:010x}",
                         "seq": first_seq + k, "ts_us": ts,
                         "vitals": {"hr": rng.randint(50, 120), "spo2": rng.randint(90, 100),
                                    "rr": rng.randint(10, 25),
                                    "temp_c": round(rng.uniform(36.0, 38.5), 1),
                                    "sys": rng.randint(110, 150), "dia": rng.randint(60, 90)}})
    if batch <= 1 or not batched_records():
        return [json.dumps({**r, "received_us": r["ts_us"] + 5000}, separators=(",", ":"))
                .encode() for r in readings]
    from vitalchain.core.payload.record import encode

    # A device's message holds its next ``batch`` readings; messages in time order of their
    # last reading (when a device would send it).
    messages = []
    per_device = [readings[d::devices] for d in range(devices)]
    for d, own in enumerate(per_device):
        for start in range(0, len(own), batch):
            chunk = own[start:start + batch]
            # With ``signed``, as the bridge forwards a message whose signature verified (every
            # reading valid): an Ed25519 signature's 88 base64 characters, the readings as sent.
            part = ({"at": [chunk[0]["ts_us"], chunk[0]["seq"]], "key_id": f"k-{d}",
                     "sig": "A" * 86 + "==", "readings": chunk} if signed else None)
            messages.append((chunk[-1]["ts_us"], d,
                             encode(chunk, chunk[-1]["ts_us"] + 5000, part)))
    messages.sort()
    return [value for _, _, value in messages]


def line_formatter():
    """How this tree's receipt writer turns kept readings into line protocol (in bulk, or one
    ``Point`` per reading in a tree from before ``reading_lines``)."""
    from vitalchain.storage import readings as stored

    if hasattr(stored, "reading_lines"):
        return lambda rows: stored.reading_lines(rows)
    return lambda rows: [stored.reading_point(*row).to_line() for row in rows]


def feed(ledger, values: list[bytes], first_offset: int, sealed_offset: int | None,
         prev_end_us: int | None, lines: bool = False) -> tuple[int, int | None, int | None]:
    """Offer ``values`` at consecutive offsets, sealing every cut window in the ledger (and with
    ``lines`` formatting every kept reading's line protocol, as the receipt writer does)."""
    from vitalchain.ingest.windowing import PartitionWindower
    from vitalchain.storage.ledger import ReadingIndexRow

    # As ingest/processor.py builds it (a tree from before the per-device mark has no
    # ``max_sealed_seq``: then every reading asks the ledger, as that tree's stream did).
    extra = ({"sealed_high": ledger.max_sealed_seq} if hasattr(ledger, "max_sealed_seq") else {})
    windower = PartitionWindower("raw", 0, window_us=WINDOW_US, salt_key=KEY, salt_key_id="k",
                                 sealed_offset=sealed_offset, prev_end_us=prev_end_us,
                                 sealed_leaf=ledger.sealed_leaf, **extra)
    kept = 0
    formatter = line_formatter() if lines else None
    pending: list = []

    def seal(closed) -> None:
        if closed.header is not None:
            rows = [ReadingIndexRow(r.canonical["device_id"], r.canonical["seq"],
                                    r.canonical["ts_us"], i, r.leaf)
                    for i, r in enumerate(closed.readings)]
            ledger.append_window(closed.topic, closed.partition, closed.header,
                                 closed.leaf_hashes, rows, closed.idle_cut, closed.tail_hash)
        windower.mark_sealed(closed)

    for offset, value in enumerate(values, first_offset):
        result = windower.offer(offset, value)
        taken = getattr(result, "kept", None)
        if taken is None:  # a tree from before record version 2: one reading per record
            taken = (result.reading,) if result.outcome == "kept" else ()
        kept += len(taken)
        if formatter is not None:
            pending += [(r.canonical, r.leaf, result.window_id, r.late, r.received_us, None)
                        for r in taken]
            if len(pending) >= 1000:
                formatter(pending)
                pending = []
        if result.closed is not None:
            seal(result.closed)
    if formatter is not None and pending:
        formatter(pending)
    tail = windower.cut_idle()
    if tail is not None:
        seal(tail)
    return kept, windower.sealed_offset, windower.prev_end_us


def parts(args: argparse.Namespace) -> dict[str, float]:
    """CPU µs per reading of each step of ``offer`` alone (best of ``--rounds``)."""
    from vitalchain.core.integrity import canonical_reading, reading_leaf_hash
    from vitalchain.ingest.windowing import parse_signed_record, record_hash

    values = records(args.devices, args.readings, args.history, args.rate, seed=3)
    parsed = [parse_signed_record(v)[0] for v in values]
    canonical = [canonical_reading(r, KEY) for r in parsed]
    steps = {"parse + checks": (parse_signed_record, values),
             "record hash": (lambda v: record_hash(b"", v), values),
             "salt + canonical object": (lambda r: canonical_reading(r, KEY), parsed),
             "leaf (JCS + BLAKE3)": (reading_leaf_hash, canonical)}
    best: dict[str, float] = {}
    for name, (step, items) in steps.items():
        for _ in range(args.rounds):
            start = time.process_time()
            for item in items:
                step(item)
            spent = (time.process_time() - start) / len(items) * 1e6
            best[name] = min(best.get(name, spent), spent)
    return best


def stream_gc_pace() -> None:
    """The collector's pace of this tree's stream worker (D51), none in a tree from before."""
    try:
        from vitalchain.ingest.gcpace import set_stream_gc_pace
    except ImportError:
        return
    set_stream_gc_pace()


def run(args: argparse.Namespace) -> list[float]:
    """This tree: the µs per reading of each round (printed as JSON by ``--child``)."""
    from vitalchain.storage.ledger import Ledger

    stream_gc_pace()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        history = records(args.devices, args.devices * args.history, 0, args.rate, seed=1,
                          batch=args.batch, signed=args.signed)
        _, sealed, prev_end = feed(ledger, history, 0, None, None)
        offset, seq = len(history), args.history
        per_round = []
        per_device = args.readings // args.devices
        profiler = cProfile.Profile() if args.profile else None
        for r in range(args.rounds):
            values = records(args.devices, args.readings, seq, args.rate, seed=100 + r,
                             batch=args.batch, signed=args.signed)
            if profiler is not None:
                profiler.enable()
            start = time.process_time()
            kept, sealed, prev_end = feed(ledger, values, offset, sealed, prev_end, args.lines)
            spent = time.process_time() - start
            if profiler is not None:
                profiler.disable()
            if kept != args.readings:
                raise SystemExit(f"round {r}: kept {kept} of {args.readings}")
            per_round.append(spent / args.readings * 1e6)
            offset += len(values)
            seq += per_device
        expected = args.devices * args.history + args.rounds * args.readings
        if ledger.reading_count() != expected:
            raise SystemExit(f"ledger holds {ledger.reading_count()} readings, fed {expected}")
        ledger.close()
        if profiler is not None:
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(25)
        return per_round


def child(tree: Path, args: argparse.Namespace, parts_mode: bool = False) -> Any:
    """One round in ``tree``'s own interpreter (its editable install), µs per reading (or, with
    ``parts_mode``, the steps' figures over ``--rounds``)."""
    command = [str(tree / ".venv" / "bin" / "python"), __file__, "--child",
               "--rounds", str(args.rounds) if parts_mode else "1",
               "--devices", str(args.devices), "--readings", str(args.readings),
               "--history", str(args.history), "--rate", str(args.rate),
               "--batch", str(args.batch)]
    if args.lines:
        command.append("--lines")
    if args.signed:
        command.append("--signed")
    if parts_mode:
        command.append("--parts")
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=tree,
                         env={**os.environ, "PYTHONPATH": ""}).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result if parts_mode else result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--readings", type=int, default=40000, help="readings per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--history", type=int, default=20, help="sealed readings per device")
    parser.add_argument("--rate", type=float, default=5.0, help="Hz per device (sets ts_us)")
    parser.add_argument("--batch", type=int, default=1,
                        help="readings per MQTT message: one record each where the tree's "
                             "record format allows (version 2), else one record per reading")
    parser.add_argument("--lines", action="store_true",
                        help="also format every kept reading's line protocol, as the receipt "
                             "writer does (not sent anywhere)")
    parser.add_argument("--signed", action="store_true",
                        help="records of signed messages (with --batch > 1), as the pipeline's")
    parser.add_argument("--profile", action="store_true", help="cProfile top 25 to stderr")
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="another worktree with its own .venv, run interleaved")
    parser.add_argument("--parts", action="store_true",
                        help="time each step of offer alone (in each tree) instead")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(parts(args) if args.parts else run(args)))
        return
    if args.parts:
        trees = [Path(__file__).resolve().parents[1], *[t.resolve() for t in args.compare]]
        print(f"steps of offer alone, {args.readings} readings, CPU us/reading (best of "
              f"{args.rounds})")
        for tree in trees:
            figures = child(tree, args, parts_mode=True)
            print(f"  {tree}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
        return
    if not args.compare:
        rounds = run(args)
        print(f"{args.readings} readings/round, {args.devices} devices, {args.history} sealed "
              f"per device before: CPU us/reading median {statistics.median(rounds):.1f} "
              f"(min {min(rounds):.1f}, max {max(rounds):.1f})")
        return
    trees = [Path(__file__).resolve().parents[1], *[t.resolve() for t in args.compare]]
    results: dict[Path, list[float]] = {t: [] for t in trees}
    for _ in range(args.rounds):
        for tree in trees:
            results[tree].append(child(tree, args))
    print(f"{args.readings} readings/round in messages of {args.batch}, signed {args.signed}, "
          f"lines {args.lines}, "
          f"{args.devices} devices, {args.history} sealed per "
          f"device before, {args.rounds} interleaved rounds; CPU us/reading")
    for tree, rounds in results.items():
        print(tree_summary(tree, rounds))


if __name__ == "__main__":
    main()
