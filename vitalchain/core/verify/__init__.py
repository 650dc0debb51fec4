"""The verifier for ``vitalchain-proof/1`` bundles (``vitalchain verify``).

Usable without any vitalchain service: :func:`verify_bundle` needs only the bundle (and, to
check the anchor on chain, an Ethereum JSON-RPC URL).  Formats: ``docs/PROOFS.md``.
"""

from __future__ import annotations

from typing import Any

from .anchor import ANCHORED_SIGNATURE, ANCHORED_TOPIC, verify_anchor
from .checks import BundleFormatError, parse_bundle, verify_offline
from .report import ERROR, INVALID, PENDING, VALID, StepResult, VerificationReport


def verify_bundle(
    bundle: Any, rpc_url: str | None = None, *, source: str | None = None, rpc: Any = None
) -> VerificationReport:
    """Verify one parsed bundle; never raises for bad input, the report says what happened.

    Offline (``rpc_url`` None): every hash is checked; status ``valid`` if all hold (the anchor,
    if any, is reported as skipped and ``anchor_checked`` is False), ``pending`` if all hold and
    ``anchor`` is null.  With ``rpc_url`` the anchor transaction is checked on chain too, and a
    null anchor fails (``not anchored``).  Status ``error`` means the input is not a readable
    bundle (``report.error`` says why); ``invalid`` means a step failed (``report.failed_step``).
    ``rpc`` lets tests inject a JSON-RPC stand-in (object with ``call(method, params)``).
    """
    report = VerificationReport(source=source)
    try:
        parse_bundle(bundle)
    except BundleFormatError as exc:
        report.error = str(exc)
        return report
    verify_offline(bundle, report)
    if rpc_url is not None or rpc is not None:
        verify_anchor(bundle, rpc_url or "<injected>", report, rpc=rpc)
    elif bundle["anchor"] is None:
        report.pending = True
        report.add("anchor", None, "pending: not anchored yet")
    else:
        report.add("anchor", None, "anchor not checked (offline; use --rpc URL)")
    return report


__all__ = [
    "ANCHORED_SIGNATURE",
    "ANCHORED_TOPIC",
    "ERROR",
    "INVALID",
    "PENDING",
    "VALID",
    "BundleFormatError",
    "StepResult",
    "VerificationReport",
    "verify_bundle",
]
