"""Audit findings and the report that carries them (human text and JSON from one structure).

Every finding names its subject the way an operator searches for it: readings as
``device_id#seq``, windows by ``window_id``, checkpoints by log size, gaps by device and seq range.

The verdict, and the exit status of ``vitalchain audit``, says only what was checked:

- ``clean`` (exit 0): something was sealed in the range and nothing was altered, deleted,
  inserted, missing or unanchored;
- ``findings`` (exit 1): at least one of those;
- ``incomplete`` (exit 1): nothing altered, deleted, inserted or unanchored, but readings the
  devices were told were delivered were lost in a Kafka restart (below);
- exit 2 (not a verdict): the audit could not run (a service down, no ledger, bad arguments);
- ``nothing_sealed`` (exit 3): no window sealed before the horizon overlaps the range and no
  reading is stored in it, so there was nothing to judge; never reported as OK.

Sequence gaps are information, not findings: docs/DEVICES.md allows them (a device reserves seqs
in blocks, so a crash skips numbers), so they never change the verdict.

Readings lost in a Kafka restart are not tampering and are reported apart from it (``lost``): a
device's sequence gap whose last reading before it was sealed in one epoch of its partition and
whose first reading after it in a later epoch sat in Kafka's memory when the broker restarted or
the topic was recreated (docs/STREAM.md, "Epochs").  They still make the audit fail: readings the
devices were told were delivered are missing, and the report says so plainly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from vitalchain.storage.ledger import EpochRecord

CLEAN, FINDINGS, INCOMPLETE, NOTHING_SEALED = "clean", "findings", "incomplete", "nothing_sealed"
EXIT_CODES = {CLEAN: 0, FINDINGS: 1, INCOMPLETE: 1, NOTHING_SEALED: 3}
EXIT_CANNOT_RUN = 2
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
    # Stored in InfluxDB on receipt (not verifiable), in a window of ``from_epoch`` past what it
    # sealed, rather than a gap between sealed readings.
    stored: bool = False

    @property
    def count(self) -> int:
        return self.last_missing - self.first_missing + 1


@dataclass
class AuditReport:
    start_us: int
    end_us: int
    # The horizon: the audit judges the window log as it was when it started (``horizon_log_size``
    # windows, at ``horizon_us``); what a running stream seals meanwhile is counted, not judged.
    horizon_us: int = 0
    horizon_log_size: int = 0
    readings: list[ReadingFinding] = field(default_factory=list)
    windows: list[WindowFinding] = field(default_factory=list)
    checkpoints: list[CheckpointFinding] = field(default_factory=list)
    gaps: list[GapFinding] = field(default_factory=list)
    lost: list[LossFinding] = field(default_factory=list)
    epochs: list[EpochRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    windows_checked: int = 0
    readings_checked: int = 0
    checkpoints_checked: int = 0
    chain_checked: bool = False
    readings_after_horizon: int = 0  # stored in range, sealed after the audit began: not judged
    readings_received: int = 0  # stored in range, in a still-open window: not sealed, not judged
    windows_after_horizon: int = 0

    @property
    def nothing_sealed(self) -> bool:
        return self.windows_checked == 0 and self.readings_checked == 0

    @property
    def verdict(self) -> str:
        if self.finding_count():
            return FINDINGS
        if self.lost:
            return INCOMPLETE
        return NOTHING_SEALED if self.nothing_sealed else CLEAN

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def tampered(self) -> bool:
        """Any finding other than readings lost in a Kafka restart (gaps are information)."""
        return bool(self.finding_count())

    @property
    def ok(self) -> bool:
        """True only for ``clean``: something was judged and nothing is wrong."""
        return self.verdict == CLEAN

    def lost_count(self) -> int:
        return sum(f.count for f in self.lost)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "vitalchain-audit/1",
            "range": {"start_us": self.start_us, "end_us": self.end_us},
            "horizon": {"at_us": self.horizon_us, "log_size": self.horizon_log_size},
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "ok": self.ok,
            "summary": self.summary(),
            "counts": {"windows_checked": self.windows_checked,
                       "readings_checked": self.readings_checked,
                       "checkpoints_checked": self.checkpoints_checked,
                       "chain_checked": self.chain_checked,
                       "windows_after_horizon": self.windows_after_horizon,
                       "readings_after_horizon": self.readings_after_horizon,
                       "readings_received": self.readings_received,
                       "gaps": len(self.gaps)},
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

    def summary(self) -> str:
        """The verdict in one line that names what was checked (and what was not)."""
        chain = (f"{self.checkpoints_checked} checkpoints checked on chain" if self.chain_checked
                 else "checkpoints not checked on chain")
        lost = (f"{self.lost_count()} readings acknowledged to devices were lost in Kafka restarts "
                "before they were sealed (not tampering)")
        if self.verdict == FINDINGS:
            besides = f"; besides, {lost}" if self.lost else ""
            return f"FAILED: {self.finding_count()} findings ({chain}){besides}"
        if self.verdict == INCOMPLETE:
            return f"INCOMPLETE: nothing altered, deleted, inserted or unanchored, but {lost} ({chain})"
        if self.verdict == NOTHING_SEALED:
            return ("NOTHING SEALED in this range before the horizon: 0 windows, 0 readings "
                    f"judged, so nothing is vouched for ({chain})")
        return (f"OK: {self.windows_checked} windows and {self.readings_checked} readings sealed "
                f"before the horizon: nothing altered, deleted, inserted or missing; {chain}")

    def to_text(self) -> str:
        lines = [f"audit {self.start_us}..{self.end_us} us: {self.windows_checked} windows, "
                 f"{self.readings_checked} readings, {self.checkpoints_checked} checkpoints "
                 f"checked{'' if self.chain_checked else ' (chain not checked)'}",
                 f"horizon: the log's first {self.horizon_log_size} windows, as at "
                 f"{self.horizon_us} us (audit start); sealed after it and not judged: "
                 f"{self.windows_after_horizon} windows, {self.readings_after_horizon} readings"]
        if self.readings_received:
            lines.append(f"received, not sealed yet and not judged: {self.readings_received} "
                         "readings stored in their partition's still-open window (an insertion "
                         "among them is found by an audit after that window seals)")
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
            lines.append(f"info: sequence gap {span} ({g.count} never sealed; gaps are allowed "
                         "by docs/DEVICES.md, not a finding)")
        for f in self.lost:
            span = (reading_id(f.device_id, f.first_missing) if f.count == 1 else
                    f"{reading_id(f.device_id, f.first_missing)}..{f.last_missing}")
            if f.stored:
                lines.append(f"LOST IN A KAFKA RESTART: {span} ({f.count} never sealed): stored "
                             f"in InfluxDB on receipt in a window of epoch {f.from_epoch} of "
                             f"{f.topic}[{f.partition}] past what that epoch sealed, its record "
                             "lost with Kafka's memory; unverifiable, withheld from clinicians "
                             "(a point written to look like one gets the same verdict)")
                continue
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
        lines.append(self.summary())
        return "\n".join(lines)

    def finding_count(self) -> int:
        """Findings that fail the audit (gaps are information only)."""
        return len(self.readings) + len(self.windows) + len(self.checkpoints)
