"""Audit findings and the report that carries them (human text and JSON from one structure).

Every finding names its subject the way an operator searches for it: readings as
``device_id#seq``, windows by ``window_id``, checkpoints by log size, gaps by device and seq range.

Readings lost in a Kafka restart are not tampering and are reported apart from it (``lost``): a
device's sequence gap whose last reading before it was sealed in one epoch of its partition and
whose first reading after it in a later epoch sat in Kafka's memory when the broker restarted or
the topic was recreated (docs/STREAM.md, "Epochs").  They still make the audit fail: readings the
devices were told were delivered are missing, and the report says so plainly.
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


@dataclass(frozen=True)
class LossFinding:
    """Readings acknowledged to a device but never sealed because Kafka lost them."""

    device_id: str
    first_missing: int
    last_missing: int
    topic: str
    partition: int
    from_epoch: int
    to_epoch: int

    @property
    def count(self) -> int:
        return self.last_missing - self.first_missing + 1


@dataclass(frozen=True)
class EpochNote:
    """One new epoch of a partition (its offsets started over), as the ledger recorded it."""

    topic: str
    partition: int
    epoch: int
    started_at_us: int
    reason: str
    prior_sealed_offset: int | None
    prior_end_offset: int | None

    @property
    def unsealed_records(self) -> int | None:
        """Records the old incarnation held beyond what was sealed, as far as the stream saw
        (an upper bound on readings lost there: duplicates and rejected records count too)."""
        if self.prior_end_offset is None:
            return None
        return max(0, self.prior_end_offset - (self.prior_sealed_offset
                                               if self.prior_sealed_offset is not None else -1) - 1)


@dataclass
class AuditReport:
    start_us: int
    end_us: int
    readings: list[ReadingFinding] = field(default_factory=list)
    windows: list[WindowFinding] = field(default_factory=list)
    checkpoints: list[CheckpointFinding] = field(default_factory=list)
    gaps: list[GapFinding] = field(default_factory=list)
    lost: list[LossFinding] = field(default_factory=list)
    epochs: list[EpochNote] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    windows_checked: int = 0
    readings_checked: int = 0
    checkpoints_checked: int = 0
    chain_checked: bool = False

    @property
    def tampered(self) -> bool:
        """Any finding other than readings lost in a Kafka restart."""
        return bool(self.readings or self.windows or self.checkpoints or self.gaps)

    @property
    def ok(self) -> bool:
        return not (self.tampered or self.lost)

    def lost_count(self) -> int:
        return sum(f.count for f in self.lost)

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
            "lost": [{**asdict(f), "count": f.count, "cause": "kafka_restart"}
                     for f in self.lost],
            "lost_count": self.lost_count(),
            "epochs": [{**asdict(e), "unsealed_records": e.unsealed_records}
                       for e in self.epochs],
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
        for f in self.lost:
            span = (reading_id(f.device_id, f.first_missing) if f.count == 1 else
                    f"{reading_id(f.device_id, f.first_missing)}..{f.last_missing}")
            lines.append(f"LOST IN A KAFKA RESTART: {span} ({f.count} missing): sealed readings "
                         f"of the device surround it in epochs {f.from_epoch} and {f.to_epoch} of "
                         f"{f.topic}[{f.partition}]; acknowledged to the device, held only in "
                         "Kafka's memory, never sealed (not tampering)")
        for e in self.epochs:
            held = ("" if e.unsealed_records is None else
                    f"; Kafka held {e.unsealed_records} records beyond it that were never sealed")
            sealed = ("nothing" if e.prior_sealed_offset is None
                      else f"up to offset {e.prior_sealed_offset}")
            lines.append(f"EPOCH: {e.topic}[{e.partition}] started epoch {e.epoch} at "
                         f"{e.started_at_us} us ({e.reason}); epoch {e.epoch - 1} had sealed "
                         f"{sealed}{held}")
        lines.extend(f"note: {n}" for n in self.notes)
        lines.append(self._verdict())
        return "\n".join(lines)

    def _verdict(self) -> str:
        lost = (f"{self.lost_count()} readings acknowledged to devices were lost in Kafka "
                "restarts before they were sealed (not tampering)")
        if self.ok:
            return "OK: nothing altered, deleted, inserted, missing or unanchored"
        if not self.tampered:
            return f"INCOMPLETE: nothing altered, deleted, inserted or unanchored, but {lost}"
        verdict = f"FAILED: {self.finding_count()} findings"
        return f"{verdict}; besides, {lost}" if self.lost else verdict

    def finding_count(self) -> int:
        return len(self.readings) + len(self.windows) + len(self.checkpoints) + len(self.gaps)
