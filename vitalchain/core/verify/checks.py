"""Offline checks of a ``vitalchain-proof/1`` bundle: every hash, no network, no services.

Deliberately independent of the code that *produces* bundles (as sigstore-python keeps its
verify path apart): it imports only canonical JSON, the hasher and the RFC 9162 verification
functions, and re-derives every hash from the bundle's own contents.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from vitalchain.core.integrity.bundle import PROOF_FORMATS
from vitalchain.core.integrity.canonical import CanonicalError, canonical_json
from vitalchain.core.integrity.hashing import blake3_hasher
from vitalchain.core.integrity.merkle import ProofError, root_from_inclusion_proof
from vitalchain.errors import InvalidInput

from .report import VerificationReport

WINDOW_FORMAT = "vitalchain-window/1"
HEX_HASH = re.compile(r"[0-9a-f]{64}")
ETH_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
ETH_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


class BundleFormatError(InvalidInput):
    """The bundle is not a readable ``vitalchain-proof/1`` document (exit code 2)."""


# The input checks every document kind shares (bundles, consistency documents, access proofs):
# each raises BundleFormatError naming the member, so unreadable input is always status "error".
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def need(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise BundleFormatError(f"missing field {where}.{key}")
    return obj[key]


def need_obj(obj: Mapping[str, Any], key: str, where: str = "$") -> dict[str, Any]:
    value = need(obj, key, where)
    if not isinstance(value, dict):
        raise BundleFormatError(f"{where}.{key} must be an object")
    return value


def need_int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = need(obj, key, where)
    if not _is_int(value) or value < 0:
        raise BundleFormatError(f"{where}.{key} must be a non-negative integer")
    return value


def need_hex(obj: Mapping[str, Any], key: str, where: str) -> bytes:
    value = need(obj, key, where)
    if not isinstance(value, str) or not HEX_HASH.fullmatch(value):
        raise BundleFormatError(f"{where}.{key} must be 64 lowercase hex characters")
    return bytes.fromhex(value)


def need_path(obj: Mapping[str, Any], key: str, where: str) -> list[bytes]:
    """``obj[key]``: an array of hashes, each 64 lowercase hex."""
    path = need(obj, key, where)
    if not isinstance(path, list):
        raise BundleFormatError(f"{where}.{key} must be an array")
    out = []
    for i, element in enumerate(path):
        if not isinstance(element, str) or not HEX_HASH.fullmatch(element):
            raise BundleFormatError(f"{where}.{key}[{i}] must be 64 lowercase hex characters")
        out.append(bytes.fromhex(element))
    return out


def proof_part(doc: Mapping[str, Any], key: str) -> tuple[int, int, list[bytes]]:
    """``doc[key]`` as ``{"index", "size", "path"}`` (an inclusion proof), checked."""
    part = need_obj(doc, key)
    return need_int(part, "index", key), need_int(part, "size", key), need_path(part, "path", key)


def check_anchor_fields(anchor: Any) -> dict[str, Any] | None:
    """Validate the ``anchor`` member's shape; returns it (or None) or raises."""
    if anchor is None:
        return None
    if not isinstance(anchor, dict):
        raise BundleFormatError("anchor must be null or an object")
    for key in ("chain_id", "block_number", "log_index"):
        need_int(anchor, key, "anchor")
    for key, pattern in (("contract", ETH_ADDRESS), ("tx_hash", ETH_HASH),
                         ("block_hash", ETH_HASH)):
        value = need(anchor, key, "anchor")
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise BundleFormatError(f"anchor.{key} must be 0x-prefixed hex of the right length")
    return anchor


def parse_bundle(bundle: Any) -> dict[str, Any]:
    """Check the bundle's structure (fields, types, hex shapes); raise BundleFormatError."""
    if not isinstance(bundle, dict):
        raise BundleFormatError("a bundle must be a JSON object")
    fmt = bundle.get("format")
    if fmt not in PROOF_FORMATS:
        raise BundleFormatError(f"format is {fmt!r}, expected one of {', '.join(PROOF_FORMATS)}")
    if bundle.get("hash") != "blake3":
        raise BundleFormatError(f"hash is {bundle.get('hash')!r}, only 'blake3' is supported")
    need_obj(bundle, "reading")
    window = need_obj(bundle, "window")
    need_hex(window, "root", "window")
    need_int(window, "size", "window")
    checkpoint = need_obj(bundle, "checkpoint")
    need_hex(checkpoint, "root", "checkpoint")
    need_int(checkpoint, "size", "checkpoint")
    proof_part(bundle, "reading_proof")
    proof_part(bundle, "window_proof")
    check_anchor_fields(need(bundle, "anchor", "$"))
    return bundle


def _leaf(obj: dict[str, Any]) -> bytes:
    return blake3_hasher.leaf(canonical_json(obj))


def check_reading_in_window(reading: Mapping[str, Any], window: Mapping[str, Any]) -> str | None:
    """Why the reading does not fit the header's device ranges and time span, or None."""
    devices = window.get("devices")
    dev, seq, ts = reading.get("device_id"), reading.get("seq"), reading.get("ts_us")
    if not isinstance(devices, dict) or not isinstance(devices.get(dev), dict):
        return f"device {dev!r} is not listed in window.devices"
    entry = devices[dev]
    first, last = entry.get("first_seq"), entry.get("last_seq")
    if not (_is_int(seq) and _is_int(first) and _is_int(last) and first <= seq <= last):
        return f"seq {seq!r} is outside the window's range {first!r}..{last!r} for {dev!r}"
    start, end = window.get("start_us"), window.get("end_us")
    if not (_is_int(ts) and _is_int(start) and _is_int(end) and start <= ts <= end):
        return f"ts_us {ts!r} is outside the window's span {start!r}..{end!r}"
    return None


def verify_offline(bundle: dict[str, Any], report: VerificationReport) -> None:
    """Run every hash step on a structurally valid bundle, appending results to ``report``."""
    reading, window = bundle["reading"], bundle["window"]
    r_index, r_size, r_path = proof_part(bundle, "reading_proof")
    w_index, w_size, w_path = proof_part(bundle, "window_proof")
    window_root = bytes.fromhex(window["root"])
    checkpoint = bundle["checkpoint"]

    # reading-leaf: the reading hashes canonically and carries its salt
    reading_leaf: bytes | None = None
    salt = reading.get("salt")
    if not isinstance(salt, str) or not HEX_HASH.fullmatch(salt):
        report.add("reading-leaf", False, "reading has no salt of 64 lowercase hex characters")
    else:
        try:
            reading_leaf = _leaf(reading)
            report.add("reading-leaf", True, reading_leaf.hex())
        except CanonicalError as exc:
            report.add("reading-leaf", False, f"reading is not canonical JSON: {exc}")

    # reading-inclusion: the reading's path leads to the window's root
    if reading_leaf is None:
        report.add("reading-inclusion", None, "no reading leaf")
    elif r_size != window["size"]:
        report.add("reading-inclusion", False,
                   f"reading_proof.size {r_size} != window.size {window['size']}")
    else:
        try:
            got = root_from_inclusion_proof(reading_leaf, r_index, r_size, r_path)
        except ProofError as exc:
            report.add("reading-inclusion", False, str(exc))
        else:
            if got == window_root:
                report.add("reading-inclusion", True, f"window root {got.hex()}")
            else:
                report.add("reading-inclusion", False,
                           f"path leads to {got.hex()}, window.root is {window['root']}")

    # window-contents: the header's own claims about the reading
    why = check_reading_in_window(reading, window)
    report.add("window-contents", why is None, why or "device seq range and time span hold")

    # window-leaf: the header hashes canonically
    window_leaf: bytes | None = None
    if window.get("format") != WINDOW_FORMAT:
        report.add("window-leaf", False,
                   f"window.format is {window.get('format')!r}, expected {WINDOW_FORMAT!r}")
    else:
        try:
            window_leaf = _leaf(window)
            report.add("window-leaf", True, window_leaf.hex())
        except CanonicalError as exc:
            report.add("window-leaf", False, f"window header is not canonical JSON: {exc}")

    # window-inclusion: the header's path is well formed for the checkpoint's size
    log_root: bytes | None = None
    if window_leaf is None:
        report.add("window-inclusion", None, "no window leaf")
    elif w_size != checkpoint["size"]:
        report.add("window-inclusion", False,
                   f"window_proof.size {w_size} != checkpoint.size {checkpoint['size']}")
    else:
        try:
            log_root = root_from_inclusion_proof(window_leaf, w_index, w_size, w_path)
            report.add("window-inclusion", True, f"log root {log_root.hex()}")
        except ProofError as exc:
            report.add("window-inclusion", False, str(exc))

    # checkpoint: ...and leads to the checkpoint's root
    if log_root is None:
        report.add("checkpoint", None, "no log root")
    elif log_root.hex() == checkpoint["root"]:
        report.add("checkpoint", True, f"size {checkpoint['size']} root {checkpoint['root']}")
    else:
        report.add("checkpoint", False,
                   f"path leads to {log_root.hex()}, checkpoint.root is {checkpoint['root']}")
