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
from .checks import BundleFormatError, check_anchor_fields, need, need_hex, need_int, need_obj, proof_part
from .report import VerificationReport
from .rpc import ChainRpc


def verify_access_proof(doc: Any, rpc: ChainRpc | None = None, *,
                        source: str | None = None) -> VerificationReport:
    """Check an access proof; never raises for bad input (the report says what happened)."""
    report = VerificationReport(source=source)
    try:
        if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT or doc.get("hash") != "blake3":
            raise BundleFormatError(f"format must be {PROOF_FORMAT!r} with hash 'blake3'")
        entry, window, cp = need_obj(doc, "entry"), need_obj(doc, "window"), need_obj(doc, "checkpoint")
        entry_index, entry_size, entry_path = proof_part(doc, "entry_proof")
        window_index, window_size, window_path = proof_part(doc, "window_proof")
        window_root, cp_root = need_hex(window, "root", "window"), need_hex(cp, "root", "checkpoint")
        cp_size = need_int(cp, "size", "checkpoint")
        seq, ts_us = need_int(entry, "seq", "entry"), need_int(entry, "ts_us", "entry")
        first, last, start_us, end_us, size = (need_int(window, k, "window") for k in
                                               ("first_offset", "last_offset", "start_us", "end_us", "size"))
        check_anchor_fields(need(doc, "anchor", "$"))
    except BundleFormatError as exc:
        report.error = f"unreadable access proof: {exc}"
        return report
    report.add("format", True, PROOF_FORMAT)
    try:
        if entry.get("format") != ENTRY_FORMAT or window.get("format") != WINDOW_FORMAT:
            raise ProofError("entry or window has the wrong format")
        if entry_size != size:
            raise ProofError("entry_proof.size differs from window.size")
        verify_inclusion(entry_leaf(entry), entry_index, entry_size, entry_path, window_root)
        report.add("entry-inclusion", True, f"entry {seq} is leaf {entry_index}")
    except (ProofError, ValueError, TypeError) as exc:
        report.add("entry-inclusion", False, str(exc) or type(exc).__name__)
        return report
    if not (first <= seq <= last and start_us <= ts_us <= end_us and seq - first == entry_index):
        report.add("window-contents", False, "entry seq/time/index outside the window's ranges")
        return report
    report.add("window-contents", True, "seq and time within the window")
    try:
        if window_size != cp_size:
            raise ProofError("window_proof.size differs from checkpoint.size")
        verify_inclusion(window_leaf_hash(window), window_index, window_size, window_path, cp_root)
        report.add("checkpoint", True, f"window is leaf {window_index} of the log at size {cp_size}")
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
