"""Verification results: one record per step, so a failure always names where it broke."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VALID = "valid"  # every hash checks out (and, with --rpc, the anchor is on chain)
PENDING = "pending"  # every hash checks out; not anchored yet (offline only)
INVALID = "invalid"  # some step failed
ERROR = "error"  # the input is unreadable (not JSON, wrong format, missing fields)

EXIT_CODES = {VALID: 0, PENDING: 0, INVALID: 1, ERROR: 2}
# The steps a vitalchain-proof/2 bundle adds (core/verify/signature.py).
DEVICE_STEPS = frozenset({"device-signature", "device-key"})


@dataclass
class StepResult:
    """Outcome of one named step: ``ok`` is True, False, or None when skipped."""

    step: str
    ok: bool | None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        status = "skipped" if self.ok is None else ("ok" if self.ok else "failed")
        return {"step": self.step, "status": status, "detail": self.detail}


@dataclass
class VerificationReport:
    """All step results for one bundle plus the overall ``status`` (see module constants)."""

    source: str | None = None
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None  # set when the input itself is unusable (status "error")
    anchor_checked: bool = False
    pending: bool = False
    anchor_block: int | None = None  # set once the anchor is verified on chain, in this block
    # a consistency document has two anchors: each verified end's block, old then new
    anchor_blocks: list[int] = field(default_factory=list)

    def add(self, step: str, ok: bool | None, detail: str = "") -> bool:
        self.steps.append(StepResult(step, ok, detail))
        return bool(ok)

    @property
    def failed_steps(self) -> list[StepResult]:
        return [s for s in self.steps if s.ok is False]

    @property
    def failed_step(self) -> str | None:
        """Name of the first failed step (or ``"input"`` for unusable input), else None."""
        if self.error is not None:
            return "input"
        failed = self.failed_steps
        return failed[0].step if failed else None

    @property
    def status(self) -> str:
        if self.error is not None:
            return ERROR
        if self.failed_steps:
            return INVALID
        return PENDING if self.pending else VALID

    @property
    def ok(self) -> bool:
        """True for ``valid`` and ``pending`` (hashes hold)."""
        return self.status in (VALID, PENDING)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def summary(self) -> str:
        """The verdict in words that name what was checked: never "anchored" for a skipped step."""
        if self.error is not None:
            return f"not a usable proof: {self.error}"
        failed = self.failed_steps
        device_failures = [s for s in failed if s.step in DEVICE_STEPS]
        hash_failures = [s for s in failed if not s.step.startswith("anchor")
                         and s.step not in DEVICE_STEPS]
        if hash_failures:
            first = hash_failures[0]
            return f"hashes INVALID: step {first.step} failed ({first.detail})"
        if device_failures:
            first = device_failures[0]
            return (f"hashes valid, device signature INVALID: step {first.step} failed "
                    f"({first.detail})")
        return self._prefix() + self._anchor_summary(failed)

    def _prefix(self) -> str:
        """``signed by the device, `` when both device steps of a ``/2`` bundle passed."""
        done = {s.step for s in self.steps if s.ok}
        return "signed by the device, " if done >= DEVICE_STEPS else ""

    def _anchor_summary(self, failed: list[StepResult]) -> str:
        if failed:
            first = failed[0]
            if first.step == "anchor-rpc":
                return f"hashes valid, anchor not checked: the node could not be asked ({first.detail})"
            return f"hashes valid, anchor check FAILED at step {first.step} ({first.detail})"
        if self.pending:
            return "hashes valid, not anchored yet (no anchor to check)"
        if self.anchor_checked and len(self.anchor_blocks) > 1:
            blocks = ", ".join(str(b) for b in self.anchor_blocks)
            return f"hashes valid, both anchors verified on chain (blocks {blocks})"
        if self.anchor_checked and self.anchor_block is not None:
            return f"hashes valid, anchor verified on chain (block {self.anchor_block})"
        return "hashes valid, anchor not checked"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status,
            "failed_step": self.failed_step,
            "anchor_checked": self.anchor_checked,
            "anchor_block": self.anchor_block,
            "anchor_blocks": list(self.anchor_blocks),
            "summary": self.summary,
            "error": self.error,
            "steps": [s.to_dict() for s in self.steps],
        }
