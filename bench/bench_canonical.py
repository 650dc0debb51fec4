"""What the stream pays to turn a reading into its leaf: fast canonical path vs the general one.

    .venv/bin/python bench/bench_canonical.py [--readings 20000] [--rounds 7]

Per reading the stream derives the salt (JCS of ``["vitalchain-salt/1", device, seq]``) and hashes
the canonical reading (JCS of it, BLAKE3): two canonicalisations. Both paths run in the same
process, interleaved round by round (A B A B ...) so the ratio holds on a noisy shared machine;
figures are CPU time (``time.process_time``) per reading, median over the rounds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitalchain.core.integrity import canonical as canonical_module
from vitalchain.core.integrity import canonical_reading, reading_leaf_hash

KEY = bytes(range(32))


def readings(n: int) -> list[dict]:
    rng = random.Random(7)
    return [{"device_id": f"wearable-{i % 2000:05d}", "patient_id": f"patient-{i % 2000:010x}", "seq": i,
             "ts_us": 1_767_225_600_000_000 + i * 1000,
             "vitals": {"hr": rng.randint(50, 120), "spo2": rng.randint(90, 100), "rr": rng.randint(10, 25),
                        "temp_c": round(rng.uniform(36.0, 38.5), 1), "sys": rng.randint(100, 150),
                        "dia": rng.randint(60, 90)}, "received_us": 1} for i in range(n)]


def one_round(batch: list[dict]) -> float:
    start = time.process_time()
    for reading in batch:
        reading_leaf_hash(canonical_reading(reading, KEY))
    return (time.process_time() - start) / len(batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    batch = readings(args.readings)
    fast_path = canonical_module._fast
    fast, general = [], []
    for _ in range(args.rounds):
        canonical_module._fast = fast_path
        fast.append(one_round(batch))
        canonical_module._fast = lambda obj: None  # every call takes the general path (rfc8785)
        general.append(one_round(batch))
    canonical_module._fast = fast_path
    ratios = [g / f for f, g in zip(fast, general, strict=True)]
    print(f"salt + leaf of {args.readings} readings, {args.rounds} interleaved rounds, CPU us/reading "
          f"(median, min..max)")
    print(f"  fast path     {statistics.median(fast):7.1f}  ({min(fast):.1f}..{max(fast):.1f})")
    print(f"  general path  {statistics.median(general):7.1f}  ({min(general):.1f}..{max(general):.1f})")
    print(f"  general/fast  {statistics.median(ratios):7.2f}x (per round {min(ratios):.2f}..{max(ratios):.2f})")


if __name__ == "__main__":
    main()
