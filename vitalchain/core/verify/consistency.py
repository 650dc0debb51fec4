"""Verification of ``vitalchain-consistency/1`` documents: an anchored log only ever grew.

Document (docs/PROOFS.md, "Consistency proofs"): ``{"format", "hash": "blake3", "old": {size, root},
"new": {size, root}, "path": [hex, ...], "anchors": {"old": anchor, "new": anchor}}``. Offline, the
RFC 9162 consistency path is checked; with a chain, each end's anchor is checked like a bundle's.
"""

from __future__ import annotations

from typing import Any

from vitalchain.core.integrity import ProofError, verify_consistency
from vitalchain.core.integrity.bundle import CONSISTENCY_FORMAT

from .anchor import verify_anchor
from .checks import BundleFormatError, check_anchor_fields
from .report import VerificationReport
from .rpc import ChainRpc


def _hex32(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise BundleFormatError(f"{where} must be 64 hex characters")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise BundleFormatError(f"{where} must be 64 hex characters") from None


def _size(end: Any, key: str) -> int:
    size = end.get("size") if isinstance(end, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise BundleFormatError(f"{key} must be {{size, root}} with a positive integer size")
    return size


def verify_consistency_document(doc: Any, rpc: ChainRpc | None = None, *,
                                source: str | None = None) -> VerificationReport:
    """Check a consistency document; never raises for bad input (the report says what happened)."""
    report = VerificationReport(source=source)
    try:
        if not isinstance(doc, dict) or doc.get("format") != CONSISTENCY_FORMAT:
            raise BundleFormatError(f"format must be {CONSISTENCY_FORMAT!r}")
        if doc.get("hash") != "blake3":
            raise BundleFormatError("hash must be 'blake3'")
        ends = {key: (_size(doc.get(key), key), _hex32(doc[key].get("root"), f"{key}.root"))
                for key in ("old", "new")}
        path = doc.get("path")
        if not isinstance(path, list):
            raise BundleFormatError("path must be an array")
        proof = [_hex32(p, f"path[{i}]") for i, p in enumerate(path)]
        anchors = doc.get("anchors", {})
        if not isinstance(anchors, dict):
            raise BundleFormatError("anchors must be an object")
        for key in ("old", "new"):
            check_anchor_fields(anchors.get(key))
    except BundleFormatError as exc:
        report.error = str(exc)
        return report
    report.add("format", True, CONSISTENCY_FORMAT)
    (old_size, old_root), (new_size, new_root) = ends["old"], ends["new"]
    try:
        verify_consistency(old_size, new_size, old_root, new_root, proof)
        report.add("consistency", True, f"size {old_size} is a prefix of size {new_size}")
    except ProofError as exc:
        report.add("consistency", False, str(exc))
        return report
    if rpc is None:
        if anchors.get("old") is None or anchors.get("new") is None:
            report.pending = True
        report.add("anchor", None, "anchors not checked (offline; use --rpc URL)")
        return report
    report.anchor_checked = True
    for key in ("old", "new"):
        sub = VerificationReport()
        verify_anchor({"anchor": anchors.get(key), "checkpoint": doc[key]}, rpc, sub)
        failed = sub.failed_steps
        report.add(f"anchor-{key}", not failed, "; ".join(f"{s.step}: {s.detail}" for s in failed)
                   or f"checkpoint {doc[key]['size']} anchored on chain")
    return report
