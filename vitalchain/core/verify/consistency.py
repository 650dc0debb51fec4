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
from .checks import BundleFormatError, check_anchor_fields, need, need_hex, need_int, need_obj, need_path
from .report import VerificationReport
from .rpc import ChainRpc


def verify_consistency_document(doc: Any, rpc: ChainRpc | None = None, *,
                                source: str | None = None) -> VerificationReport:
    """Check a consistency document; never raises for bad input (the report says what happened)."""
    report = VerificationReport(source=source)
    try:
        if not isinstance(doc, dict) or doc.get("format") != CONSISTENCY_FORMAT:
            raise BundleFormatError(f"format must be {CONSISTENCY_FORMAT!r}")
        if doc.get("hash") != "blake3":
            raise BundleFormatError("hash must be 'blake3'")
        ends = {}
        for key in ("old", "new"):
            end = need_obj(doc, key)
            ends[key] = (need_int(end, "size", key), need_hex(end, "root", key))
            if ends[key][0] < 1:
                raise BundleFormatError(f"{key}.size must be positive")
        proof = need_path(doc, "path", "$")
        anchors = need_obj(doc, "anchors")
        for key in ("old", "new"):
            check_anchor_fields(need(anchors, key, "anchors"))
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
        if not failed and sub.anchor_block is not None:
            report.anchor_blocks.append(sub.anchor_block)
        report.add(f"anchor-{key}", not failed, "; ".join(f"{s.step}: {s.detail}" for s in failed)
                   or f"checkpoint {doc[key]['size']} anchored on chain (block {sub.anchor_block})")
    return report
