"""The ledger's append path alone: CPU per reading of ``Ledger.append_window`` (header, leaf
hashes, reading index rows, partition position, commit) as the reading index grows.

    .venv/bin/python bench/bench_ledger_append.py [--devices 2000] [--per-device 10]
        [--history 150] [--windows 10] [--rounds 3] [--compare /path/to/other/worktree ...]

Windows as the stream seals them at the issue's row: ``--devices`` devices with ``--per-device``
readings each (5 Hz, 2 s windows: 10), in window order (devices interleaved).  The ledger
(SQLite, as the stream opens it) first gets ``--history`` readings per device, then
``--windows`` windows are timed (``time.process_time()`` around ``append_window`` only: the
commit's WAL write included, building the header and rows not).  ``--compare TREE`` runs the
same with ``TREE/.venv/bin/python`` in a child process, rounds interleaved (A B A B ...).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = 1_767_225_600_000_000


def window(partition: int, first_offset: int, devices: int, per_device: int, seq0: int):
    from vitalchain.core.integrity import build_window_header
    from vitalchain.storage.ledger import ReadingIndexRow

    canon, leaves = [], []
    for k in range(per_device):
        for d in range(devices):
            seq = seq0 + k
            canon.append({"device_id": f"wearable-{d:05d}", "seq": seq,
                          "ts_us": T0 + seq * 200_000 + d})
            leaves.append(os.urandom(32))
    header = build_window_header(canon, partition=partition, first_offset=first_offset,
                                 last_offset=first_offset + devices * per_device // 10 - 1,
                                 salt_key_id="k", leaf_hashes=leaves)
    rows = [ReadingIndexRow(r["device_id"], r["seq"], r["ts_us"], i, leaf)
            for i, (r, leaf) in enumerate(zip(canon, leaves, strict=True))]
    return header, leaves, rows


def run(args: argparse.Namespace) -> list[float]:
    """One round: a fresh ledger, history, then the timed windows; CPU µs per reading each."""
    from vitalchain.storage.ledger import Ledger

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        offset, seq = 0, 0
        total = args.history // args.per_device + args.windows
        for w in range(total):
            header, leaves, rows = window(0, offset, args.devices, args.per_device, seq)
            start = time.process_time()
            ledger.append_window("raw", 0, header, leaves, rows, idle_cut=False,
                                 tail_hash=b"\0" * 32)
            spent = time.process_time() - start
            if w >= total - args.windows:
                out.append(spent * 1e6 / len(rows))
            offset, seq = header["last_offset"] + 1, seq + args.per_device
        ledger.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--per-device", type=int, default=10)
    parser.add_argument("--history", type=int, default=150)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", type=Path, action="append", default=[])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(args)))
        return
    trees = [Path(__file__).resolve().parent.parent, *[p.resolve() for p in args.compare]]
    figures: dict[Path, list[float]] = {t: [] for t in trees}
    passed = [a for a in sys.argv[1:] if a != "--compare" and not any(
        a == str(p) for p in args.compare)]
    for _ in range(args.rounds):
        for tree in trees:
            done = subprocess.run([str(tree / ".venv/bin/python"), __file__, *passed, "--child"],
                                  cwd=tree, capture_output=True, text=True, check=True)
            figures[tree].append(statistics.median(json.loads(done.stdout)))
    print(f"{args.devices} devices x {args.per_device} readings a window, {args.history} sealed "
          f"per device before, {args.windows} windows timed, {args.rounds} interleaved rounds; "
          "CPU us per reading (median of the windows, per round)")
    for tree, values in figures.items():
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        print(f"  {tree} ({head}): median {statistics.median(values):.2f} "
              f"(all {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
