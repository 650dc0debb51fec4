"""The one verifier: every proof kind vitalchain hands out, one report type, one exit-code convention.

Kinds (docs/PROOFS.md): reading bundles ``vitalchain-proof/1`` and ``/2`` (the latter adds the
device's signature and key: steps ``device-signature``, ``device-key``; :func:`verify_bundle`), consistency
documents ``vitalchain-consistency/1`` (:func:`verify_consistency_document`) and access-entry proofs
``vitalchain-access-proof/1`` (:func:`verify_access_proof`); :func:`verify_document` picks by the
``format`` member. Each returns a :class:`VerificationReport` whose ``status`` is ``valid`` or
``pending`` (exit 0), ``invalid`` (exit 1) or ``error`` for unreadable input (exit 2).

Pure: offline verification needs only the document. The on-chain steps ask a
:class:`~vitalchain.core.verify.rpc.ChainRpc` the caller passes in
(:class:`vitalchain.storage.chainrpc.JsonRpc` for a node URL).
"""

from __future__ import annotations

from typing import Any

from vitalchain.core.integrity.access import PROOF_FORMAT as ACCESS_PROOF_FORMAT
from vitalchain.core.integrity.bundle import PROOF_FORMAT, PROOF_FORMAT_V2

from .access import verify_access_proof
from .anchor import ANCHORED_SIGNATURE, ANCHORED_TOPIC, verify_anchor
from .checks import BundleFormatError, parse_bundle, verify_offline
from .consistency import CONSISTENCY_FORMAT, verify_consistency_document
from .jsonload import JsonInputError, load_json
from .report import ERROR, EXIT_CODES, INVALID, PENDING, VALID, StepResult, VerificationReport
from .rpc import ChainRpc, RpcError
from .signature import parse_device_members, verify_device_steps


def verify_bundle(bundle: Any, rpc: ChainRpc | None = None, *,
                  source: str | None = None) -> VerificationReport:
    """Verify one parsed reading bundle; never raises for bad input, the report says what happened.

    Offline (``rpc`` None): every hash is checked; status ``valid`` if all hold (the anchor, if
    any, is reported as skipped and ``anchor_checked`` is False), ``pending`` if all hold and
    ``anchor`` is null. With ``rpc`` the anchor transaction is checked on chain too, and a null
    anchor fails (``not anchored``). Status ``error`` means the input is not a readable bundle
    (``report.error`` says why); ``invalid`` means a step failed (``report.failed_step``).
    """
    report = VerificationReport(source=source)
    try:
        parse_bundle(bundle)
        if bundle["format"] == PROOF_FORMAT_V2:
            parse_device_members(bundle)
    except BundleFormatError as exc:
        report.error = str(exc)
        return report
    verify_offline(bundle, report)
    if bundle["format"] == PROOF_FORMAT_V2:
        verify_device_steps(bundle, report)
    if rpc is not None:
        verify_anchor(bundle, rpc, report)
    elif bundle["anchor"] is None:
        report.pending = True
        report.add("anchor", None, "pending: not anchored yet")
    else:
        report.add("anchor", None, "anchor not checked (offline; use --rpc URL)")
    return report


_BY_FORMAT = {
    PROOF_FORMAT: verify_bundle,
    PROOF_FORMAT_V2: verify_bundle,
    CONSISTENCY_FORMAT: verify_consistency_document,
    ACCESS_PROOF_FORMAT: verify_access_proof,
}
FORMATS = tuple(_BY_FORMAT)


def verify_document(doc: Any, rpc: ChainRpc | None = None, *,
                    source: str | None = None) -> VerificationReport:
    """Verify any document the verifier knows, chosen by its ``format`` member."""
    fmt = doc.get("format") if isinstance(doc, dict) else None
    verifier = _BY_FORMAT.get(fmt) if isinstance(fmt, str) else None
    if verifier is None:
        report = VerificationReport(source=source)
        report.error = f"format is {fmt!r}, expected one of {', '.join(FORMATS)}"
        return report
    return verifier(doc, rpc, source=source)


__all__ = [
    "ANCHORED_SIGNATURE",
    "ANCHORED_TOPIC",
    "CONSISTENCY_FORMAT",
    "ERROR",
    "EXIT_CODES",
    "FORMATS",
    "INVALID",
    "PENDING",
    "VALID",
    "BundleFormatError",
    "ChainRpc",
    "JsonInputError",
    "RpcError",
    "StepResult",
    "VerificationReport",
    "load_json",
    "verify_access_proof",
    "verify_bundle",
    "verify_consistency_document",
    "verify_document",
]
