"""Benchmark vitalchain's RFC 9162 tree against pymerkle on the same leaves.

    python bench/bench_merkle.py                 # 1,000,000 leaves, 10,000 inclusion proofs
    python bench/bench_merkle.py --leaves 2000   # smoke test

SHA-256 is used for the side-by-side comparison (pymerkle has no BLAKE3); our BLAKE3 figures
are printed alongside.  The run also cross-checks that both libraries give the same roots and
audit paths, so a fast wrong answer cannot look good.  Each operation is timed once (wall
clock, ``time.perf_counter``) on the same process and inputs.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitalchain.core.integrity import (
    MerkleLog,
    blake3_hasher,
    sha256_hasher,
    verify_consistency,
    verify_inclusion,
)
from vitalchain.core.integrity.hashing import Hasher


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_ours(hasher: Hasher, entries: list[bytes], queries: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    out["hash leaves"], leaves = timed(lambda: [hasher.leaf(e) for e in entries])
    out["build tree"], log = timed(lambda: MerkleLog(leaves, hasher))
    out["root (full size)"], root = timed(log.root)
    out["root at 1,000 past sizes"], _ = timed(lambda: [log.root(s) for s in queries["sizes"]])

    def prove() -> list[list[bytes]]:
        return [log.inclusion_proof(i, s) for i, s in queries["inclusion"]]

    out["inclusion proofs"], proofs = timed(prove)
    roots = {s: log.root(s) for _, s in queries["inclusion"]}

    def verify() -> None:
        for (i, s), path in zip(queries["inclusion"], proofs, strict=True):
            verify_inclusion(leaves[i], i, s, path, roots[s], hasher)

    out["verify inclusion"], _ = timed(verify)
    out["consistency proofs"], cproofs = timed(
        lambda: [log.consistency_proof(m, n) for m, n in queries["consistency"]])
    croots = {s: log.root(s) for pair in queries["consistency"] for s in pair}

    def cverify() -> None:
        for (m, n), proof in zip(queries["consistency"], cproofs, strict=True):
            verify_consistency(m, n, croots[m], croots[n], proof, hasher)

    out["verify consistency"], _ = timed(cverify)
    out["_root"] = root  # type: ignore[assignment]
    out["_log"] = log  # type: ignore[assignment]
    return out


def bench_pymerkle(entries: list[bytes], queries: dict[str, Any]) -> dict[str, Any]:
    import pymerkle

    out: dict[str, Any] = {"hash leaves": None}

    def build() -> Any:
        tree = pymerkle.InmemoryTree(algorithm="sha256")
        for e in entries:
            tree.append_entry(e)  # pymerkle hashes the leaf itself: leaf time is included
        return tree

    out["build tree"], tree = timed(build)
    out["root (full size)"], root = timed(tree.get_root)
    out["root at 1,000 past sizes"], _ = timed(lambda: [tree.get_root(s) for s in queries["sizes"]])
    out["inclusion proofs"], proofs = timed(
        lambda: [tree.prove_inclusion(i + 1, s) for i, s in queries["inclusion"]])
    roots = {s: tree.get_root(s) for _, s in queries["inclusion"]}

    def verify() -> None:
        for (i, s), proof in zip(queries["inclusion"], proofs, strict=True):
            pymerkle.verify_inclusion(tree.get_leaf(i + 1), roots[s], proof)

    out["verify inclusion"], _ = timed(verify)
    out["consistency proofs"], cproofs = timed(
        lambda: [tree.prove_consistency(m, n) for m, n in queries["consistency"]])
    croots = {s: tree.get_root(s) for pair in queries["consistency"] for s in pair}

    def cverify() -> None:
        for (m, n), proof in zip(queries["consistency"], cproofs, strict=True):
            pymerkle.verify_consistency(croots[m], croots[n], proof)

    out["verify consistency"], _ = timed(cverify)
    out["_root"] = root
    out["_tree"] = tree
    out["_proofs"] = proofs
    return out


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "(in build)"
    if seconds < 0.001:
        return f"{seconds * 1e6:,.0f} µs"
    return f"{seconds * 1000:,.1f} ms" if seconds < 10 else f"{seconds:,.2f} s"


def ratio(theirs: float, ours: float) -> str:
    value = theirs / ours if ours else float("inf")
    return f"{value:,.2f}x" if value < 10 else f"{value:,.1f}x"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leaves", type=int, default=1_000_000)
    ap.add_argument("--proofs", type=int, default=10_000, help="random inclusion proofs")
    ap.add_argument("--consistency", type=int, default=1_000, help="random consistency proofs")
    ap.add_argument("--seed", type=int, default=9162)
    ap.add_argument("--no-pymerkle", action="store_true", help="only our figures")
    args = ap.parse_args(argv)

    n = args.leaves
    rng = random.Random(args.seed)
    entries = [rng.randbytes(32) for _ in range(n)]
    sizes = [rng.randint(1, n) for _ in range(1_000)]
    inclusion = []
    for _ in range(args.proofs):
        size = n if rng.random() < 0.5 else rng.randint(1, n)  # half at full size, half past
        inclusion.append((rng.randrange(size), size))
    consistency = []
    for _ in range(args.consistency):
        new = rng.randint(1, n)
        consistency.append((rng.randint(1, new), new))
    queries = {"sizes": sizes, "inclusion": inclusion, "consistency": consistency}

    print(f"leaves: {n:,}  inclusion proofs: {args.proofs:,}  consistency proofs: "
          f"{args.consistency:,}  (python {sys.version.split()[0]})", flush=True)
    ours_sha = bench_ours(sha256_hasher, entries, queries)
    ours_b3 = bench_ours(blake3_hasher, entries, queries)
    theirs = None if args.no_pymerkle else bench_pymerkle(entries, queries)

    if theirs is not None:  # same answers, or the timings mean nothing
        assert theirs["_root"] == ours_sha["_root"], "root differs from pymerkle"
        log = ours_sha["_log"]
        for (i, s), proof in list(zip(inclusion, theirs["_proofs"], strict=True))[:1000]:
            assert proof.path[1:] == log.inclusion_proof(i, s), f"path differs at {i}/{s}"

    ops = [k for k in ours_sha if not k.startswith("_")]
    header = ["operation", "ours sha256", "ours blake3"]
    if theirs is not None:
        header += ["pymerkle sha256", "pymerkle / ours"]
    rows = [header]
    for op in ops:
        row = [op, fmt(ours_sha[op]), fmt(ours_b3[op])]
        if theirs is not None:
            t = theirs[op]
            if op == "build tree":
                base = ours_sha["hash leaves"] + ours_sha["build tree"]
                row += [fmt(t), ratio(t, base) + " (vs hash+build)"]
            else:
                row += [fmt(t), "" if t is None else ratio(t, ours_sha[op])]
        rows.append(row)
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    for j, r in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    if theirs is not None:
        print(f"roots agree: {ours_sha['_root'].hex()}; first 1,000 audit paths identical")
    print(f"blake3 root: {ours_b3['_root'].hex()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
