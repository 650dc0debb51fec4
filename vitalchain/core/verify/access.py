"""Verification of ``vitalchain-access-proof/1`` documents: an access-log entry is in the anchored log.

The document mirrors the reading bundle (docs/PROOFS.md, "Access-entry proofs"): ``entry``,
``entry_proof`` (in its access window's tree), ``window`` (the access window header),
``window_proof`` (in the window log), ``checkpoint`` and ``anchor``, checked in that order.
"""

from __future__ import annotations

from typing import Any

from vitalchain.core.integrity import ProofError, verify_inclusion, window_leaf_hash
from vitalchain.core.integrity.access import ENTRY_FORMAT, PROOF_FORMAT, WINDOW_FORMAT, entry_leaf

from .anchor import verify_anchor
from .checks import BundleFormatError, check_anchor_fields
from .report import VerificationReport
from .rpc import ChainRpc


def _hexes(values: Any, where: str) -> list[bytes]:
    if not isinstance(values, list) or not all(isinstance(v, str) and len(v) == 64 for v in values):
        raise BundleFormatError(f"{where} must be a list of 64-hex-character hashes")
    try:
        return [bytes.fromhex(v) for v in values]
    except ValueError:
        raise BundleFormatError(f"{where} must be a list of 64-hex-character hashes") from None


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BundleFormatError(f"{where}.{key} must be a non-negative integer")
    return value


def verify_access_proof(doc: Any, rpc: ChainRpc | None = None, *,
                        source: str | None = None) -> VerificationReport:
    """Check an access proof; never raises for bad input (the report says what happened)."""
    report = VerificationReport(source=source)
    try:
        if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT or doc.get("hash") != "blake3":
            raise BundleFormatError(f"format must be {PROOF_FORMAT!r} with hash 'blake3'")
        parts = {k: doc.get(k) for k in ("entry", "window", "entry_proof", "window_proof", "checkpoint")}
        for key, value in parts.items():
            if not isinstance(value, dict):
                raise BundleFormatError(f"{key} must be an object")
        entry, window, ep, wp, cp = parts.values()
        entry_path = _hexes(ep.get("path"), "entry_proof.path")
        window_path = _hexes(wp.get("path"), "window_proof.path")
        (window_root,) = _hexes([window.get("root")], "window.root")
        (cp_root,) = _hexes([cp.get("root")], "checkpoint.root")
        numbers = {f"{w}.{k}": _int(o, k, w) for w, o, keys in (
            ("entry", entry, ("seq", "ts_us")), ("entry_proof", ep, ("index", "size")),
            ("window", window, ("first_offset", "last_offset", "start_us", "end_us", "size")),
            ("window_proof", wp, ("index", "size")), ("checkpoint", cp, ("size",))) for k in keys}
        check_anchor_fields(doc.get("anchor"))
    except BundleFormatError as exc:
        report.error = f"unreadable access proof: {exc}"
        return report
    report.add("format", True, PROOF_FORMAT)
    try:
        if entry.get("format") != ENTRY_FORMAT or window.get("format") != WINDOW_FORMAT:
            raise ProofError("entry or window has the wrong format")
        if numbers["entry_proof.size"] != numbers["window.size"]:
            raise ProofError("entry_proof.size differs from window.size")
        verify_inclusion(entry_leaf(entry), numbers["entry_proof.index"], numbers["entry_proof.size"],
                         entry_path, window_root)
        report.add("entry-inclusion", True, f"entry {entry['seq']} is leaf {ep['index']}")
    except (ProofError, ValueError, TypeError) as exc:
        report.add("entry-inclusion", False, str(exc) or type(exc).__name__)
        return report
    if not (numbers["window.first_offset"] <= numbers["entry.seq"] <= numbers["window.last_offset"]
            and numbers["window.start_us"] <= numbers["entry.ts_us"] <= numbers["window.end_us"]
            and numbers["entry.seq"] - numbers["window.first_offset"] == numbers["entry_proof.index"]):
        report.add("window-contents", False, "entry seq/time/index outside the window's ranges")
        return report
    report.add("window-contents", True, "seq and time within the window")
    try:
        if numbers["window_proof.size"] != numbers["checkpoint.size"]:
            raise ProofError("window_proof.size differs from checkpoint.size")
        verify_inclusion(window_leaf_hash(window), numbers["window_proof.index"],
                         numbers["window_proof.size"], window_path, cp_root)
        report.add("checkpoint", True,
                   f"window is leaf {wp['index']} of the log at size {cp['size']}")
    except (ProofError, ValueError, TypeError) as exc:
        report.add("checkpoint", False, str(exc) or type(exc).__name__)
        return report
    if rpc is not None:
        verify_anchor({"anchor": doc.get("anchor"), "checkpoint": cp}, rpc, report)
    elif doc.get("anchor") is None:
        report.pending = True
        report.add("anchor", None, "pending: not anchored yet")
    else:
        report.add("anchor", None, "anchor not checked (offline; use --rpc URL)")
    return report
