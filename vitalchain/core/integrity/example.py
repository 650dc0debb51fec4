"""The worked examples of ``docs/PROOFS.md``, generated from fixed inputs.

``python -m vitalchain.core.integrity.example [reading|consistency|access]`` prints the Markdown
between the matching markers of the document (``example``, ``consistency-example``,
``access-example``); ``tests/test_integrity_docs.py`` regenerates each and fails if the document
differs, so every number in the document is real and stays so.
"""

from __future__ import annotations

import json
from typing import Any

from .access import ENTRY_FORMAT, build_access_proof, build_access_window_header, entry_leaf
from .bundle import build_bundle, build_consistency_document
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


# --- consistency documents and access-entry proofs ---------------------------------------------
EXAMPLE_ANCHOR_2 = {**EXAMPLE_ANCHOR, "tx_hash": "0x" + blake3_hasher.digest(b"second anchoring transaction").hex(),
                    "block_number": 57, "block_hash": "0x" + blake3_hasher.digest(b"second example block").hex()}
ACCESS_NONCES = ("00112233445566778899aabbccddeeff", "0123456789abcdef0123456789abcdef",
                 "ffeeddccbbaa99887766554433221100")


def example_access_entries() -> list[dict[str, Any]]:
    """Three access-log entries (seq 1..3) sealed as window ``access-1``, log leaf 3 of the example."""
    rows = [("audrey", "auditor", "GET", "/audit/proofs/ring-c/3", "", "patient-3", True, 200, "auditor"),
            ("carol", "clinician", "GET", "/patients/patient-2/vitals", "start=2026-01-01", "patient-2",
             False, 403, "no active grant for patient-2"),
            ("carol", "clinician", "GET", "/patients/patient-1/vitals", "", "patient-1", True, 200,
             "grant active")]
    return [{"format": ENTRY_FORMAT, "seq": i + 1, "ts_us": T0 + 5_000_000 + i * 250_000, "user": user,
             "role": role, "method": method, "path": path, "query": query, "patient_id": patient,
             "allowed": allowed, "status": status, "reason": reason, "nonce": ACCESS_NONCES[i]}
            for i, (user, role, method, path, query, patient, allowed, status, reason) in enumerate(rows)]


def example_log_leaves() -> list[bytes]:
    """The log of the consistency and access examples: the three reading windows, then ``access-1``."""
    return ([window_leaf_hash(h) for _, h in example_windows()]
            + [window_leaf_hash(build_access_window_header(example_access_entries()))])


def example_consistency() -> dict[str, Any]:
    """``vitalchain-consistency/1`` from the checkpoint of size 3 (the bundle's) to size 4."""
    return build_consistency_document(MerkleLog(example_log_leaves()), 3, 4, EXAMPLE_ANCHOR, EXAMPLE_ANCHOR_2)


def example_access_proof() -> dict[str, Any]:
    """The access proof of entry 2 (a refused request) against the checkpoint of size 4."""
    entries = example_access_entries()
    log = MerkleLog(example_log_leaves())
    return build_access_proof(entries[1], 1, [entry_leaf(e) for e in entries],
                              build_access_window_header(entries), 3, log, 4, log.root(4).hex(),
                              EXAMPLE_ANCHOR_2)


def consistency_steps(old_size: int, new_size: int, old_root: bytes, path: list[bytes]) -> list[str]:
    """Narrate RFC 9162 2.1.4.2 (verifying a consistency proof), one line per step."""
    lines: list[str] = []
    if old_size & (old_size - 1) == 0:
        path = [old_root, *path]
        lines.append(f"    old size {old_size} is a power of 2: prepend old.root to the path")
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    lines.append(f"    fn = {fn}, sn = {sn}; fr = sr = c[0] = {fr.hex()}")
    for i, c in enumerate(path[1:], start=1):
        if fn & 1 or fn == sn:
            fr, sr = blake3_hasher.node(c, fr), blake3_hasher.node(c, sr)
            lines.append(f"    c[{i}]: fr = H(0x01 || c || fr) = {fr.hex()}")
            lines.append(f"          sr = H(0x01 || c || sr) = {sr.hex()}")
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = blake3_hasher.node(sr, c)
            lines.append(f"    c[{i}]: sr = H(0x01 || sr || c) = {sr.hex()}")
        fn >>= 1
        sn >>= 1
        lines.append(f"          fn = {fn}, sn = {sn}")
    lines.append(f"    fr = {fr.hex()}  (must equal old.root)")
    lines.append(f"    sr = {sr.hex()}  (must equal new.root; sn must be 0)")
    return lines


def render_consistency_markdown() -> str:
    """The Markdown between the ``consistency-example`` markers of PROOFS.md."""
    doc = example_consistency()
    leaves = example_log_leaves()
    path = [bytes.fromhex(p) for p in doc["path"]]
    out = ["The log of the reading example (3 windows) grows by one window, the access window "
           "`access-1` of section 9:", "", "```"]
    out += [f"    log_leaf[{i}] = {leaf.hex()}" for i, leaf in enumerate(leaves)]
    out += ["```", "", f"old = size 3, root `{doc['old']['root']}` (the bundle's checkpoint in section 7);",
            f"new = size 4, root `{doc['new']['root']}`. Verification of the path:", "", "```"]
    out += consistency_steps(3, 4, bytes.fromhex(doc["old"]["root"]), path)
    out += ["```", "", "The document:", "", "```json", json.dumps(doc, indent=2), "```"]
    return "\n".join(out) + "\n"


def render_access_markdown() -> str:
    """The Markdown between the ``access-example`` markers of PROOFS.md."""
    doc = example_access_proof()
    entries = example_access_entries()
    leaves = [entry_leaf(e) for e in entries]
    ep, wp = doc["entry_proof"], doc["window_proof"]
    out = ["Entry 2 (a refused request) of access window `access-1`; JCS of the entry:", "", "```",
           canonical_json(doc["entry"]).decode(), "```", "",
           f"entry leaf = BLAKE3(0x00 || JCS) = `{leaves[1].hex()}`", "", "Entry leaves of the window:", "",
           "```"]
    out += [f"    entry_leaf[{i}] = {leaf.hex()}   (seq {entries[i]['seq']})" for i, leaf in enumerate(leaves)]
    out += [f"    path[{i}] = {p}" for i, p in enumerate(ep["path"])]
    out += _fold(leaves[1], ep["index"], ep["size"], [bytes.fromhex(p) for p in ep["path"]])
    out += [f"    window.root = {doc['window']['root']}", "```", "", "JCS of the access window header:", "",
            "```", canonical_json(doc["window"]).decode(), "```", "",
            f"window leaf = BLAKE3(0x00 || JCS) = `{window_leaf_hash(doc['window']).hex()}`, log leaf "
            f"{wp['index']} of the checkpoint of size {wp['size']}:", "", "```"]
    out += [f"    path[{i}] = {p}" for i, p in enumerate(wp["path"])]
    out += _fold(window_leaf_hash(doc["window"]), wp["index"], wp["size"], [bytes.fromhex(p) for p in wp["path"]])
    out += [f"    checkpoint.root = {doc['checkpoint']['root']}", "```", "", "The document:", "", "```json",
            json.dumps(doc, indent=2), "```"]
    return "\n".join(out) + "\n"


# --- device signatures (vitalchain-proof/2) ------------------------------------------------------
EXAMPLE_DEVICE_SEED = bytes(range(32, 64))  # 202122...3f: an example device key, never use it for real


def example_device_key() -> tuple[Any, bytes]:
    """The example device's Ed25519 private key and its raw public key."""
    from .devicekeys import private_key_from_seed

    key = private_key_from_seed(EXAMPLE_DEVICE_SEED)
    return key, key.public


def example_signed_parts() -> dict[str, Any]:
    """The pieces of the signed example: key entry and window, one signed message of three
    readings sealed as one window after it, the log of both."""
    from .devicekeys import build_key_entry, build_key_window_header, key_id_of, sign_message

    key, public = example_device_key()
    entry = build_key_entry(1, T0 - 60_000_000, "register", "watch-s", public)
    key_header = build_key_window_header([entry])
    sent = [_reading("watch-s", "patient-4", s, T0 + s * 1_000_000, 80 + s) for s in (1, 2, 3)]
    key_id = key_id_of(public)
    sig = sign_message(key, key_id, sent)
    readings = [canonical_reading(r, EXAMPLE_KEY) for r in sent]
    header = build_window_header(readings, partition=2, first_offset=0, last_offset=2,
                                 salt_key_id=salt_key_id(EXAMPLE_KEY))
    log = MerkleLog([window_leaf_hash(key_header), window_leaf_hash(header)])
    return {"entry": entry, "key_header": key_header, "sent": sent, "key_id": key_id, "sig": sig,
            "readings": readings, "header": header, "log": log}


def example_signed_bundle() -> dict[str, Any]:
    """The ``vitalchain-proof/2`` example: reading seq 2 of watch-s (index 1), checkpoint size 2."""
    from .devicekeys import build_key_proof, key_entry_leaf

    p = example_signed_parts()
    log = p["log"]
    key_proof = build_key_proof(p["entry"], 0, [key_entry_leaf(p["entry"])], p["key_header"], 0, 2,
                                log.inclusion_proof(0, 2))
    return build_bundle(p["readings"][1], 1, [reading_leaf_hash(r) for r in p["readings"]],
                        p["header"], 1, log, 2, EXAMPLE_ANCHOR,
                        {"key_id": p["key_id"], "sig": p["sig"], "readings": p["sent"]}, key_proof)


def render_signed_markdown() -> str:
    """The Markdown between the ``signed-example`` markers of PROOFS.md."""
    from .devicekeys import from_b64url, key_entry_leaf, signed_bytes

    doc = example_signed_bundle()
    _key, public = example_device_key()
    ds, dk = doc["device_signature"], doc["device_key"]
    data = signed_bytes(ds["key_id"], ds["readings"])
    out = ["Device `watch-s` has the Ed25519 key whose 32-byte seed is `2021...3f` (bytes 32..63; an "
           "example, never use it). Its raw public key and key id:", "", "```",
           f"    public_key (hex)       = {public.hex()}",
           f"    public_key (base64url) = {dk['entry']['public_key']}",
           f"    key_id = hex(SHA-256(public_key))[:32] = {ds['key_id']}", "```", "",
           "Step `device-signature`. The signed bytes are JCS of `{\"key_id\", \"readings\"}` "
           f"({len(data)} bytes, UTF-8):", "", "```", data.decode(), "```", "",
           f"The signature (base64url, no padding) `{ds['sig']}` is 64 bytes:", "", "```",
           f"    {from_b64url(ds['sig'], 64, 'sig').hex()}", "```", "",
           "Ed25519-verify (RFC 8032) it over those bytes with the public key; then remove `salt` from "
           "the bundle's `reading` and compare its JCS with the JCS of each signed reading: it must equal "
           "one of them (here position 1):", "", "```",
           canonical_json({k: v for k, v in doc["reading"].items() if k != "salt"}).decode(), "```", "",
           "Step `device-key`. JCS of the key's registration entry and its leaf:", "", "```",
           canonical_json(dk["entry"]).decode(), "```", "",
           f"entry leaf = BLAKE3(0x00 || JCS) = `{key_entry_leaf(dk['entry']).hex()}`; the window "
           f"holds only this entry, so its root is that leaf (`{dk['window']['root']}`). JCS of the "
           "device-key window header:", "", "```", canonical_json(dk["window"]).decode(), "```", "",
           f"window leaf = BLAKE3(0x00 || JCS) = `{window_leaf_hash(dk['window']).hex()}` = log leaf "
           f"{dk['window_proof']['index']}; the reading's window is log leaf "
           f"{doc['window_proof']['index']} (key first, as required):", "", "```"]
    wp = dk["window_proof"]
    out += [f"    path[{i}] = {x}" for i, x in enumerate(wp["path"])]
    out += _fold(window_leaf_hash(dk["window"]), wp["index"], wp["size"],
                 [bytes.fromhex(x) for x in wp["path"]])
    out += [f"    checkpoint.root = {doc['checkpoint']['root']}", "```", "",
            "The reading's own steps (`reading-leaf` .. `checkpoint`) are those of section 7 on this "
            "bundle's members. The document:", "", "```json", json.dumps(doc, indent=2), "```"]
    return "\n".join(out) + "\n"


RENDERERS = {"reading": render_markdown, "consistency": render_consistency_markdown,
             "access": render_access_markdown, "signed": render_signed_markdown}


if __name__ == "__main__":
    import sys

    print(RENDERERS[sys.argv[1] if len(sys.argv) > 1 else "reading"](), end="")
