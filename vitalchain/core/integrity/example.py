"""The worked example of ``docs/PROOFS.md``, generated from fixed inputs.

``python -m vitalchain.integrity.example`` prints the Markdown between the ``example`` markers
of the document; ``tests/test_integrity_docs.py`` regenerates it and fails if the document
differs, so every number in the document is real and stays so.
"""

from __future__ import annotations

import json
from typing import Any

from .bundle import build_bundle
from .canonical import canonical_json
from .hashing import blake3_hasher
from .leaves import canonical_reading, reading_leaf_hash, window_leaf_hash
from .log import MerkleLog
from .salt import SALT_DOMAIN, salt_key_id
from .window import build_window_header

EXAMPLE_KEY = bytes(range(32))  # 000102...1f: an example key, never use it for real data
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in microseconds


def _reading(device: str, patient: str, seq: int, ts_us: int, hr: int) -> dict[str, Any]:
    return {
        "device_id": device,
        "patient_id": patient,
        "seq": seq,
        "ts_us": ts_us,
        "vitals": {"hr": hr, "spo2": 97, "rr": 15, "temp_c": 36.8, "sys": 121, "dia": 79},
    }


def example_windows() -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Three windows (readings, header) in log order; the example proves window 1, reading 3."""
    specs = [
        (0, 0, [_reading("watch-a", "patient-1", s, T0 + s * 1_000_000, 70 + s) for s in range(3)]),
        (1, 0, [
            _reading("watch-b", "patient-2", 7, T0 + 500_000, 88),
            _reading("ring-c", "patient-3", 1, T0 + 700_000, 61),
            _reading("watch-b", "patient-2", 8, T0 + 1_500_000, 90),
            _reading("ring-c", "patient-3", 2, T0 + 1_700_000, 62),
            _reading("ring-c", "patient-3", 3, T0 + 2_700_000, 60),
        ]),
        (0, 3, [_reading("watch-a", "patient-1", s, T0 + s * 1_000_000, 70 + s) for s in (3, 4)]),
    ]
    out = []
    for partition, first_offset, raw in specs:
        readings = [canonical_reading(r, EXAMPLE_KEY) for r in raw]
        header = build_window_header(
            readings,
            partition=partition,
            first_offset=first_offset,
            last_offset=first_offset + len(readings) - 1,
            salt_key_id=salt_key_id(EXAMPLE_KEY),
            late=1 if partition == 1 else 0,
        )
        out.append((readings, header))
    return out


EXAMPLE_ANCHOR = {
    "chain_id": 31337,
    "contract": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    "tx_hash": "0x" + blake3_hasher.digest(b"example anchoring transaction").hex(),
    "block_number": 42,
    "block_hash": "0x" + blake3_hasher.digest(b"example block").hex(),
    "log_index": 0,
}


def example_bundle() -> dict[str, Any]:
    """The example bundle (reading 3 of window 1, checkpoint of size 3)."""
    windows = example_windows()
    readings, header = windows[1]
    log = MerkleLog([window_leaf_hash(h) for _, h in windows])
    leaves = [reading_leaf_hash(r) for r in readings]
    return build_bundle(readings[3], 3, leaves, header, 1, log, 3, EXAMPLE_ANCHOR)


def _fold(leaf: bytes, index: int, size: int, path: list[bytes]) -> list[str]:
    """Narrate RFC 9162 2.1.3.2 for one proof, one line per path element."""
    lines = [f"    r  = {leaf.hex()}   (leaf; fn = {index}, sn = {size - 1})"]
    fn, sn, r = index, size - 1, leaf
    for i, p in enumerate(path):
        if fn & 1 or fn == sn:
            r = blake3_hasher.node(p, r)
            how = f"H(0x01 || path[{i}] || r)"
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = blake3_hasher.node(r, p)
            how = f"H(0x01 || r || path[{i}])"
        fn >>= 1
        sn >>= 1
        lines.append(f"    r  = {how} = {r.hex()}   (fn = {fn}, sn = {sn})")
    return lines


def render_markdown() -> str:
    """The Markdown of the worked example (what sits between the markers in PROOFS.md)."""
    windows = example_windows()
    bundle = example_bundle()
    readings, header = windows[1]
    reading = bundle["reading"]
    leaves = [reading_leaf_hash(r) for r in readings]
    log_leaves = [window_leaf_hash(h) for _, h in windows]
    salt_input = canonical_json([SALT_DOMAIN, reading["device_id"], reading["seq"]])
    rp, wp = bundle["reading_proof"], bundle["window_proof"]
    out: list[str] = []
    add = out.append
    add("Salt key (example only): `" + EXAMPLE_KEY.hex() + "`,")
    add(f"`salt_key_id` = first 8 hex of BLAKE3(key) = `{salt_key_id(EXAMPLE_KEY)}`.")
    add("")
    add(f"**1. Salt** of ({reading['device_id']!r}, {reading['seq']}): keyed BLAKE3 of")
    add("")
    add("```")
    add(salt_input.decode())
    add("```")
    add("")
    add(f"= `{reading['salt']}`")
    add("")
    add("**2. Reading leaf**: JCS of the canonical reading (UTF-8, no whitespace):")
    add("")
    add("```")
    add(canonical_json(reading).decode())
    add("```")
    add("")
    add(f"leaf = BLAKE3(0x00 || JCS) = `{leaves[3].hex()}`")
    add("")
    add(f"**3. Window tree** ({header['window_id']}, {len(leaves)} readings). Leaf hashes in "
        "window order:")
    add("")
    add("```")
    for i, leaf in enumerate(leaves):
        add(f"    leaf[{i}] = {leaf.hex()}")
    add("```")
    add("")
    add(f"Audit path for index {rp['index']} of size {rp['size']}, folded as in RFC 9162 "
        "2.1.3.2:")
    add("")
    add("```")
    for i, p in enumerate(rp["path"]):
        add(f"    path[{i}] = {p}")
    out.extend(_fold(leaves[3], rp["index"], rp["size"], [bytes.fromhex(p) for p in rp["path"]]))
    add(f"    window.root = {header['root']}")
    add("```")
    add("")
    add("**4. Window leaf**: JCS of the window header:")
    add("")
    add("```")
    add(canonical_json(header).decode())
    add("```")
    add("")
    add(f"leaf = BLAKE3(0x00 || JCS) = `{log_leaves[1].hex()}`")
    add("")
    add(f"**5. Log** of {len(log_leaves)} windows. Log leaves:")
    add("")
    add("```")
    for i, leaf in enumerate(log_leaves):
        add(f"    log_leaf[{i}] = {leaf.hex()}   ({windows[i][1]['window_id']})")
    for i, p in enumerate(wp["path"]):
        add(f"    path[{i}] = {p}")
    w_path = [bytes.fromhex(p) for p in wp["path"]]
    out.extend(_fold(log_leaves[1], wp["index"], wp["size"], w_path))
    add(f"    checkpoint.root = {bundle['checkpoint']['root']}")
    add("```")
    add("")
    add("**6. Anchor** (the chain values here are illustrative: the example was not mined). "
        "The receipt of `tx_hash` must hold, at `log_index`, a log from `contract` with")
    add("")
    add("```")
    add("    topics[0] = 0x41c3f410f5c8ac36bb46b1dccef0de0f964087c9e688795fa02ecfa2c20b3fe4")
    add(f"    topics[1] = 0x{bundle['checkpoint']['root']}")
    add(f"    data      = 0x{bundle['checkpoint']['size'].to_bytes(32, 'big').hex()}")
    add("```")
    add("")
    add("**7. The bundle**:")
    add("")
    add("```json")
    add(json.dumps(bundle, indent=2, ensure_ascii=False))
    add("```")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
