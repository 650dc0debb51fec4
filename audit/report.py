"""Audit findings and the report that carries them (human text and JSON from one structure).

Every finding names its subject the way an operator searches for it: readings as
``device_id#seq``, windows by ``window_id``, checkpoints by log size, gaps by device and seq range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

READING_KINDS = ("altered", "deleted", "inserted")
WINDOW_KINDS = ("missing", "changed", "unsealed")
CHECKPOINT_KINDS = ("root_mismatch", "not_on_chain", "inconsistent", "unrecorded_anchor",
                    "beyond_log")


def reading_id(device_id: str, seq: int | str) -> str:
    return f"{device_id}#{seq}"


@dataclass(frozen=True)
class ReadingFinding:
    kind: str  # one of READING_KINDS
    reading_id: str
    window_id: str | None
    detail: str


@dataclass(frozen=True)
class WindowFinding:
    kind: str  # one of WINDOW_KINDS
    window_id: str
    fields: tuple[str, ...]  # the changed fields (empty unless kind == "changed")
    detail: str


@dataclass(frozen=True)
class CheckpointFinding:
    kind: str  # one of CHECKPOINT_KINDS
    size: int
    root: str
    detail: str


@dataclass(frozen=True)
class GapFinding:
    device_id: str
    first_missing: int
    last_missing: int

    @property
    def count(self) -> int:
        return self.last_missing - self.first_missing + 1


@dataclass
class AuditReport:
    start_us: int
    end_us: int
    readings: list[ReadingFinding] = field(default_factory=list)
    windows: list[WindowFinding] = field(default_factory=list)
    checkpoints: list[CheckpointFinding] = field(default_factory=list)
    gaps: list[GapFinding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    windows_checked: int = 0
    readings_checked: int = 0
    checkpoints_checked: int = 0
    chain_checked: bool = False

    @property
    def ok(self) -> bool:
        return not (self.readings or self.windows or self.checkpoints or self.gaps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "vitalchain-audit/1",
            "range": {"start_us": self.start_us, "end_us": self.end_us},
            "ok": self.ok,
            "counts": {"windows_checked": self.windows_checked,
                       "readings_checked": self.readings_checked,
                       "checkpoints_checked": self.checkpoints_checked,
                       "chain_checked": self.chain_checked},
            "readings": [asdict(f) for f in self.readings],
            "windows": [{**asdict(f), "fields": list(f.fields)} for f in self.windows],
            "checkpoints": [asdict(f) for f in self.checkpoints],
            "gaps": [{**asdict(g), "count": g.count} for g in self.gaps],
            "notes": list(self.notes),
        }

    def to_text(self) -> str:
        lines = [f"audit {self.start_us}..{self.end_us} us: {self.windows_checked} windows, "
                 f"{self.readings_checked} readings, {self.checkpoints_checked} checkpoints "
                 f"checked{'' if self.chain_checked else ' (chain not checked)'}"]
        for r in self.readings:
            where = f" in {r.window_id}" if r.window_id else ""
            lines.append(f"READING {r.kind.upper()}: {r.reading_id}{where}: {r.detail}")
        for w in self.windows:
            lines.append(f"WINDOW {w.kind.upper()}: {w.window_id}: {w.detail}")
        for c in self.checkpoints:
            lines.append(f"CHECKPOINT {c.kind.upper()}: size {c.size} root {c.root}: {c.detail}")
        for g in self.gaps:
            span = (reading_id(g.device_id, g.first_missing) if g.count == 1 else
                    f"{reading_id(g.device_id, g.first_missing)}..{g.last_missing}")
            lines.append(f"GAP: {span} ({g.count} missing)")
        lines.extend(f"note: {n}" for n in self.notes)
        lines.append("OK: nothing altered, deleted, inserted, missing or unanchored" if self.ok
                     else f"FAILED: {self.finding_count()} findings")
        return "\n".join(lines)

    def finding_count(self) -> int:
        return len(self.readings) + len(self.windows) + len(self.checkpoints) + len(self.gaps)
