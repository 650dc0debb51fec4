"""The tamper audit over a time range: readings, windows, checkpoints, sequence gaps.

InfluxDB is read in time chunks sized to about ``target_rows`` points (the chunk doubles over
sparse stretches and halves over dense ones), so a year of data never sits in memory at once;
per window, only the set of reading indexes seen so far is kept until the chunk passes the
window's end, when its missing readings are reported as deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from vitalchain.audit.anchors import ChainUnavailable, check_checkpoints
from vitalchain.audit.report import (
    AuditReport,
    EpochNote,
    GapFinding,
    LossFinding,
    ReadingFinding,
    WindowFinding,
    reading_id,
)

from vitalchain.config import Settings
from vitalchain.core.integrity import CanonicalError, reading_leaf_hash
from vitalchain.storage.influx import InfluxClient, InfluxError, quote_ident
from vitalchain.storage.ledger_view import IndexedReading, LedgerUnavailable, LedgerView, WindowInfo
from vitalchain.storage.readings import READINGS_MEASUREMENT, WINDOWS_MEASUREMENT, StoredReadingError, reading_from_row

Progress = Callable[[int, int], None]
WINDOW_FIELDS = ("root", "size", "start_us", "end_us", "first_offset", "last_offset", "log_index")
MIN_CHUNK_US = 1_000_000


class AuditUnavailable(RuntimeError):
    """The audit could not run (a service down, no ledger): not a finding, exit code 2."""


@dataclass
class _Chunker:
    """Adaptive time chunks: aim for ``target`` rows per query."""

    target: int
    size_us: int

    def adapt(self, rows: int) -> None:
        if rows > self.target:
            self.size_us = max(MIN_CHUNK_US, self.size_us // 2)
        elif rows < self.target // 4:
            self.size_us *= 2


async def _chunks(client: InfluxClient, measurement: str, lo_us: int, hi_us: int,
                  chunker: _Chunker) -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    """Rows of ``measurement`` with ``lo_us <= ts_us < hi_us``; yields (chunk end, rows)."""
    q = f"SELECT * FROM {quote_ident(measurement)} WHERE time >= $a AND time < $b"
    a = lo_us
    while a < hi_us:
        b = min(hi_us, a + chunker.size_us)
        rows = await client.query(q, params={"a": a * 1000, "b": b * 1000}, epoch="ns")
        chunker.adapt(len(rows))
        yield b, rows
        a = b


def _identity(row: dict[str, Any]) -> str:
    seq = row.get("seq")
    seq_text = str(int(seq)) if isinstance(seq, int | float) else "?"
    return reading_id(str(row.get("device_id", "?")), seq_text)


class _ReadingAudit:
    """Compares stored readings with the reading index, chunk by chunk."""

    def __init__(self, view: LedgerView, report: AuditReport, windows: list[WindowInfo],
                 progress: Progress | None) -> None:
        self.view, self.report, self.progress = view, report, progress
        self.pending = windows  # by end_us: finalised as the chunks pass their end
        self.next = 0
        self.seen: dict[int, set[int]] = {}
        self.done = 0
        self.total = len(windows)

    def check_row(self, row: dict[str, Any]) -> None:
        self.report.readings_checked += 1
        try:
            stored = reading_from_row(row)
            leaf = reading_leaf_hash(stored.canonical)
        except (StoredReadingError, CanonicalError, ValueError, TypeError) as exc:
            self.report.readings.append(ReadingFinding(
                "altered", _identity(row), row.get("window_id"), f"unreadable stored reading: {exc}"))
            return
        c = stored.canonical
        rid = reading_id(c["device_id"], c["seq"])
        sealed = self.view.locate(c["device_id"], c["seq"])
        if sealed is None:
            self.report.readings.append(ReadingFinding(
                "inserted", rid, None, "stored in InfluxDB but sealed in no window"))
            return
        self.seen.setdefault(sealed.log_index, set()).add(sealed.index_in_window)
        if sealed.leaf_hash != leaf:
            self.report.readings.append(ReadingFinding(
                "altered", rid, sealed.window_id,
                f"leaf {leaf.hex()} recomputed from InfluxDB, sealed {sealed.leaf_hash.hex()}"))

    def finish_before(self, end_us: int, start_us: int, stop_us: int) -> None:
        """Report deletions of every window that ends before ``end_us`` (all its rows are read)."""
        while self.next < len(self.pending) and self.pending[self.next].end_us < end_us:
            window = self.pending[self.next]
            self.next += 1
            seen = self.seen.pop(window.log_index, set())
            for r in window_readings_in_range(self.view, window, start_us, stop_us):
                if r.index_in_window not in seen:
                    self.report.readings.append(ReadingFinding(
                        "deleted", reading_id(r.device_id, r.seq), window.window_id,
                        "sealed in the ledger, absent from InfluxDB"))
            self.done += 1
            self.report.windows_checked = self.done
            if self.progress is not None:
                self.progress(self.done, self.total)


def window_readings_in_range(view: LedgerView, window: WindowInfo, start_us: int,
                             stop_us: int) -> list[IndexedReading]:
    return sorted((r for r in view.window_readings(window) if start_us <= r.ts_us <= stop_us),
                  key=lambda r: r.index_in_window)


async def _audit_windows(client: InfluxClient, view: LedgerView, report: AuditReport,
                         windows: list[WindowInfo], start_us: int, end_us: int,
                         chunker: _Chunker) -> None:
    """``windows`` points against the ledger: missing, changed, or not sealed at all."""
    by_id = {w.window_id: w for w in windows}
    found: set[str] = set()
    lo = min([start_us, *(w.start_us for w in windows)])
    async for _, rows in _chunks(client, WINDOWS_MEASUREMENT, lo, end_us + 1, chunker):
        for row in rows:
            wid = str(row.get("window_id", ""))
            window = by_id.get(wid)
            if window is None:
                row_end = row.get("end_us")
                if isinstance(row_end, int | float) and row_end < start_us:
                    continue  # an unrelated window before the range
                report.windows.append(WindowFinding(
                    "unsealed", wid, (), "a windows point in InfluxDB for no sealed window"))
                continue
            found.add(wid)
            header = window.header
            expected = {name: header[name] for name in WINDOW_FIELDS if name != "log_index"}
            expected["log_index"] = window.log_index
            changed = tuple(name for name in WINDOW_FIELDS if row.get(name) != expected[name])
            if str(row.get("partition")) != str(header["partition"]):
                changed += ("partition",)
            if changed:
                detail = ", ".join(f"{n}: stored {row.get(n)!r}, sealed {expected.get(n, header.get(n))!r}"
                                   for n in changed)
                report.windows.append(WindowFinding("changed", wid, changed, detail))
    for window in windows:
        if window.window_id not in found:
            report.windows.append(WindowFinding("missing", window.window_id, (),
                                                "sealed in the ledger, no windows point in InfluxDB"))


def _gaps(view: LedgerView, windows: list[WindowInfo]) -> list[GapFinding]:
    """Sequence numbers sealed nowhere between a device's lowest and highest seq in range.

    Headers give each device's span; a window whose count is below its span, or a jump between
    windows, is confirmed against the reading index (the seq may be sealed in another window).
    """
    spans: dict[str, list[tuple[int, int, int]]] = {}
    for w in windows:
        for device, d in w.header.get("devices", {}).items():
            spans.setdefault(device, []).append((int(d["first_seq"]), int(d["last_seq"]), int(d["count"])))
    gaps: list[GapFinding] = []
    for device in sorted(spans):
        ranges = sorted(spans[device])
        lo, hi = ranges[0][0], max(r[1] for r in ranges)
        suspicious = any(count < last - first + 1 for first, last, count in ranges) or any(
            b[0] > a_hi + 1 for a_hi, b in zip(_running_max(ranges), ranges[1:], strict=False))
        if not suspicious:
            continue
        expected = lo
        for seq in view.device_seqs(device, lo, hi):
            if seq > expected:
                gaps.append(GapFinding(device, expected, seq - 1))
            expected = seq + 1
    return gaps


def _split_losses(view: LedgerView, gaps: list[GapFinding]) -> tuple[list[GapFinding],
                                                                      list[LossFinding]]:
    """Separate gaps lost in a Kafka restart from the unexplained ones.

    A gap is a restart loss when the device's reading just before it and the one just after it
    are sealed in the same partition, the later one in a later epoch that the ledger records as
    started: those readings were acknowledged and sat in the old incarnation's memory.  Anything
    else stays an unexplained gap (deleted before sealing, or never sent).
    """
    started = {(e.topic, e.partition, e.epoch) for e in view.epochs()}
    gaps_left: list[GapFinding] = []
    lost: list[LossFinding] = []
    for gap in gaps:
        before = view.locate(gap.device_id, gap.first_missing - 1)
        after = view.locate(gap.device_id, gap.last_missing + 1)
        a = view.window_place(before.log_index) if before else None
        b = view.window_place(after.log_index) if after else None
        if (a is not None and b is not None and a[:2] == b[:2] and b[2] > a[2]
                and all((b[0], b[1], e) in started for e in range(a[2] + 1, b[2] + 1))):
            lost.append(LossFinding(gap.device_id, gap.first_missing, gap.last_missing, a[0],
                                    a[1], a[2], b[2]))
        else:
            gaps_left.append(gap)
    return gaps_left, lost


def _running_max(ranges: list[tuple[int, int, int]]) -> list[int]:
    out, top = [], -1
    for _, last, _ in ranges:
        top = max(top, last)
        out.append(top)
    return out


async def run_audit(settings: Settings, start_us: int, end_us: int, rpc_url: str | None = None,
                    progress: Progress | None = None, target_rows: int = 20_000,
                    chunk_us: int = 60_000_000) -> AuditReport:
    """Audit ``[start_us, end_us]``; raises :class:`AuditUnavailable` if a service is down."""
    if not 0 <= start_us <= end_us:
        raise ValueError(f"bad audit range {start_us}..{end_us}")
    if rpc_url:
        settings = settings.with_overrides(eth_rpc=rpc_url)
    report = AuditReport(start_us, end_us)
    try:
        view = LedgerView(settings.ledger_path)
    except LedgerUnavailable as exc:
        raise AuditUnavailable(str(exc)) from exc
    try:
        windows = view.reading_windows(start_us, end_us)
        chunker = _Chunker(target_rows, chunk_us)
        try:
            async with InfluxClient(settings, retries=2) as client:
                readings = _ReadingAudit(view, report, windows, progress)
                async for chunk_end, rows in _chunks(client, READINGS_MEASUREMENT, start_us,
                                                     end_us + 1, chunker):
                    for row in rows:
                        readings.check_row(row)
                    readings.finish_before(chunk_end, start_us, end_us)
                readings.finish_before(2**63, start_us, end_us)  # windows reaching past the range
                await _audit_windows(client, view, report, windows, start_us, end_us,
                                     _Chunker(target_rows, chunk_us * 60))
        except InfluxError as exc:
            raise AuditUnavailable(f"InfluxDB: {exc}") from exc
        gaps, lost = _split_losses(view, _gaps(view, windows))
        report.gaps.extend(gaps)
        report.lost.extend(lost)
        report.epochs.extend(EpochNote(e.topic, e.partition, e.epoch, e.started_at_us, e.reason,
                                       e.prior_sealed_offset, e.prior_end_offset)
                             for e in view.epochs())  # rare, and context for any loss
        first_index = min((w.log_index for w in windows), default=None)
        try:
            await asyncio.to_thread(check_checkpoints, settings, view, report, first_index)
        except ChainUnavailable as exc:
            raise AuditUnavailable(str(exc)) from exc
    finally:
        view.close()
    return report
