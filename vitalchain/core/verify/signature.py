"""The two steps a ``vitalchain-proof/2`` bundle adds: ``device-signature`` and ``device-key``.

``device-signature``: the signed bytes are rebuilt as ``JCS({"key_id", "readings"})`` from the
bundle's ``device_signature``, the Ed25519 signature is checked with the public key of the
``device_key`` entry (whose key id must be SHA-256 of that key and equal the signature's key id,
for the reading's device), and the proven reading without its salt must be byte-identical (JCS) to
one of the signed readings. So a reading altered after the device signed it, or one the device
never sent, fails here even though every hash of the pipeline holds.

``device-key``: the key's ``register`` entry is a leaf of its device-key window (RFC 9162 path to
the window's root), that window is a leaf of the window log at the bundle's checkpoint (path to
the same checkpoint root the reading's window leads to), and its log index is *below* the
reading's window's: the key was in the log before the reading was sealed. Not checked (and not
claimed): that the key was not revoked later; revocations are entries of the same log, which the
audit reads, and the bridge refuses a revoked key's messages.
"""

from __future__ import annotations

from typing import Any

from vitalchain.core.integrity.canonical import CanonicalError, canonical_json
from vitalchain.core.integrity.devicekeys import (
    ALG,
    ENTRY_FORMAT,
    WINDOW_FORMAT,
    SignatureError,
    check_signature,
    entry_public_key,
    key_entry_leaf,
    load_public_key,
)
from vitalchain.core.integrity.leaves import window_leaf_hash
from vitalchain.core.integrity.merkle import ProofError, verify_inclusion

from .checks import BundleFormatError, need, need_hex, need_int, need_obj, proof_part
from .report import VerificationReport


def parse_device_members(bundle: dict[str, Any]) -> None:
    """Structure of ``device_signature`` / ``device_key`` (BundleFormatError naming the field)."""
    signed = need_obj(bundle, "device_signature")
    for key in ("alg", "key_id", "sig"):
        if not isinstance(need(signed, key, "device_signature"), str):
            raise BundleFormatError(f"device_signature.{key} must be a string")
    if not isinstance(need(signed, "readings", "device_signature"), list):
        raise BundleFormatError("device_signature.readings must be an array")
    key = need_obj(bundle, "device_key")
    need_obj(key, "entry", "device_key")
    window = need_obj(key, "window", "device_key")
    need_hex(window, "root", "device_key.window")
    need_int(window, "size", "device_key.window")
    proof_part(key, "entry_proof")
    proof_part(key, "window_proof")


def verify_device_steps(bundle: dict[str, Any], report: VerificationReport) -> None:
    """Append ``device-signature`` and ``device-key`` to ``report`` (structure already checked)."""
    signed, key = bundle["device_signature"], bundle["device_key"]
    reading, entry = bundle["reading"], key["entry"]
    report.add("device-signature", *_signature(signed, entry, reading))
    report.add("device-key", *_key(key, entry, reading, bundle))


def _signature(signed: dict[str, Any], entry: dict[str, Any],
               reading: dict[str, Any]) -> tuple[bool, str]:
    if signed["alg"] != ALG:
        return False, f"device_signature.alg is {signed['alg']!r}, expected {ALG!r}"
    if entry.get("key_id") != signed["key_id"]:
        return False, (f"signed with key {signed['key_id'][:40]!r}, but the key entry is "
                       f"{str(entry.get('key_id'))[:40]!r}")
    if entry.get("device_id") != reading.get("device_id"):
        return False, (f"the key belongs to {entry.get('device_id')!r}, the reading to "
                       f"{reading.get('device_id')!r}")
    try:
        public = load_public_key(entry_public_key(entry))
        check_signature(public, signed["key_id"], signed["sig"], signed["readings"])
    except SignatureError as exc:
        return False, str(exc)
    try:
        mine = canonical_json({k: v for k, v in reading.items() if k != "salt"})
        signed_bytes = [canonical_json(r) for r in signed["readings"]]
    except CanonicalError as exc:
        return False, f"reading is not canonical JSON: {exc}"
    if mine not in signed_bytes:
        return False, ("the reading is not byte-identical to any of the "
                       f"{len(signed_bytes)} reading(s) the device signed")
    position = signed_bytes.index(mine)
    return True, (f"Ed25519 key {signed['key_id']} signed this reading (message of "
                  f"{len(signed_bytes)}, position {position})")


def _key(key: dict[str, Any], entry: dict[str, Any], reading: dict[str, Any],
         bundle: dict[str, Any]) -> tuple[bool, str]:
    window = key["window"]
    if entry.get("format") != ENTRY_FORMAT or entry.get("action") != "register":
        return False, f"device_key.entry must be a {ENTRY_FORMAT!r} 'register' entry"
    if window.get("format") != WINDOW_FORMAT:
        return False, f"device_key.window.format must be {WINDOW_FORMAT!r}"
    if entry.get("device_id") != reading.get("device_id"):
        return False, "the key entry names another device"
    e_index, e_size, e_path = proof_part(key, "entry_proof")
    w_index, w_size, w_path = proof_part(key, "window_proof")
    checkpoint = bundle["checkpoint"]
    r_window_index = bundle["window_proof"]["index"]
    try:
        entry_public_key(entry)
        if e_size != window["size"]:
            raise ProofError(f"entry_proof.size {e_size} != window.size {window['size']}")
        verify_inclusion(key_entry_leaf(entry), e_index, e_size, e_path,
                         bytes.fromhex(window["root"]))
        if w_size != checkpoint["size"]:
            raise ProofError(f"window_proof.size {w_size} != checkpoint.size {checkpoint['size']}")
        verify_inclusion(window_leaf_hash(window), w_index, w_size, w_path,
                         bytes.fromhex(checkpoint["root"]))
    except (ProofError, SignatureError, CanonicalError, ValueError, TypeError) as exc:
        return False, str(exc) or type(exc).__name__
    first, last = window.get("first_offset"), window.get("last_offset")
    seq = entry.get("seq")
    if not (isinstance(first, int) and isinstance(seq, int) and isinstance(last, int)
            and first <= seq <= last and seq - first == e_index):
        return False, "entry seq is outside its window's range or not at its index"
    if w_index >= r_window_index:
        return False, (f"the key's window is log leaf {w_index}, not before the reading's "
                       f"window (leaf {r_window_index})")
    return True, (f"key {entry['key_id']} registered to {entry['device_id']} in log leaf "
                  f"{w_index}, before the reading's window (leaf {r_window_index}), at checkpoint "
                  f"size {checkpoint['size']}")
