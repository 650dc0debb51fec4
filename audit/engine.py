"""The tamper audit over a time range: readings, windows, checkpoints, sequence gaps.

InfluxDB is read in time chunks sized to about ``target_rows`` points (the chunk doubles over
sparse stretches and halves over dense ones), so a year of data never sits in memory at once;
per window, only the set of reading indexes seen so far is kept until the chunk passes the
window's end, when its missing readings are reported as deleted.

The audit runs against a live pipeline, so it fixes a *horizon* when it starts: the ledger's log
size then.  Windows at or past it, and the readings and ``windows`` points they seal, are counted
but not judged (the stream seals them while the audit reads).  The stream writes a window's
readings to InfluxDB just before the ledger append and its ``windows`` point just after, so a
reading stored but not yet sealed, or a recently sealed window whose point is not there yet, is
waited for (up to ``settle_s``) before it becomes a finding.

Readings are stored on *receipt*, before their window seals (docs/STREAM.md), so a live range
always holds points the ledger does not have yet.  A point sealed nowhere whose ``window_id`` is
its partition's one open window now (``vitalchain.storage.verified.open_window_state``, the rule
verified reads use) is counted as *received* and not judged: neither a pass nor a finding, and
the report says how many.  Every other point sealed nowhere is waited for and then reported as
inserted.  An insertion that names the open window is therefore found by the first audit after
that window seals (it then names a sealed window that does not hold it), never vouched for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from vitalchain.audit.anchors import ChainUnavailable, check_checkpoints
from vitalchain.audit.report import (
    AuditReport,
    GapFinding,
    LossFinding,
    ReadingFinding,
    WindowFinding,
    reading_id,
)
from vitalchain.config import Settings
from vitalchain.errors import Unavailable
from vitalchain.storage.influx import InfluxClient, InfluxError, quote_ident
from vitalchain.storage.ledger_view import IndexedReading, LedgerUnavailable, LedgerView, WindowInfo
from vitalchain.storage.readings import READINGS_MEASUREMENT, WINDOWS_MEASUREMENT, StoredReadingError, stored_leaf
from vitalchain.storage.verified import open_window_state, parse_window_id

Progress = Callable[[int, int], None]
WINDOW_FIELDS = ("root", "size", "start_us", "end_us", "first_offset", "last_offset", "log_index")
MIN_CHUNK_US = 1_000_000
# A window sealed (appended to the ledger) this long before the horizon may still lack its
# windows point (the stream writes it right after the append); older ones are judged at once.
IN_FLIGHT_US = 120_000_000


@dataclass(frozen=True)
class Horizon:
    """What the audit judges: windows below ``log_size``, the log's size at ``at_us``."""

    at_us: int
    log_size: int
    settle_s: float

    def recent(self, moment_us: int | None) -> bool:
        return moment_us is not None and moment_us >= self.at_us - IN_FLIGHT_US


@dataclass(frozen=True)
class _Unsealed:
    device_id: str
    seq: int
    window_id: object  # what the point claims: only used to tell whether it can be in flight


class AuditUnavailable(Unavailable):
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


REREAD_ATTEMPTS = 3
REREAD_PAUSE_S = 0.1


async def reread_rows(client: InfluxClient, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row read again by its device and time, until it parses (a few short tries).

    For rows that were unreadable when a scan met them (see ``_ReadingAudit.check_row``): a point
    being written when scanned reads whole a moment later; a point stored unreadable stays so,
    and the last read is returned to be judged."""
    q = (f"SELECT * FROM {quote_ident(READINGS_MEASUREMENT)} "
         "WHERE time = $t AND device_id = $d")
    result = []
    for row in rows:
        latest = row
        for attempt in range(REREAD_ATTEMPTS):
            if attempt:
                await asyncio.sleep(REREAD_PAUSE_S)
            again = await client.query(q, params={"t": row.get("time"), "d": row.get("device_id")},
                                       epoch="ns")
            if not again:
                break  # gone: judge what was read
            latest = again[0]
            try:
                stored_leaf(latest)
            except StoredReadingError:
                continue
            break
        result.append(latest)
    return result


def _identity(row: dict[str, Any]) -> str:
    seq = row.get("seq")
    seq_text = str(int(seq)) if isinstance(seq, int | float) else "?"
    return reading_id(str(row.get("device_id", "?")), seq_text)


class _ReadingAudit:
    """Compares stored readings with the reading index, chunk by chunk."""

    def __init__(self, view: LedgerView, report: AuditReport, windows: list[WindowInfo],
                 progress: Progress | None, horizon: Horizon) -> None:
        self.view, self.report, self.progress, self.horizon = view, report, progress, horizon
        self.pending = windows  # by end_us: finalised as the chunks pass their end
        self.next = 0
        self.seen: dict[int, set[int]] = {}
        self.done = 0
        self.total = len(windows)
        self.unsealed: list[_Unsealed] = []  # judged at the end (they may be in flight)
        # Stored on receipt in an epoch's unsealed tail, then lost with that incarnation.
        self.received_lost: list[LossFinding] = []

    def check_row(self, row: dict[str, Any], torn: list[dict[str, Any]] | None = None) -> None:
        """Judge one stored row; an unreadable one goes to ``torn`` (when given) to be read again.

        InfluxDB 1.x stores each field of a point as its own series and does not make a point's
        fields visible at once: a scan that meets a point while the stream writes it (on
        receipt, in the range being audited) can see some fields and not others. Such a row is
        read again before it is judged; one still unreadable then is reported as altered."""
        try:
            stored, leaf = stored_leaf(row)
        except StoredReadingError as exc:
            if torn is not None:
                torn.append(row)
                return
            self.report.readings_checked += 1
            self.report.readings.append(ReadingFinding(
                "altered", _identity(row), row.get("window_id"), f"unreadable stored reading: {exc}"))
            self._mark_seen(row)  # one finding: the point is there, not deleted
            return
        c = stored.canonical
        rid = reading_id(c["device_id"], c["seq"])
        sealed = self.view.locate(c["device_id"], c["seq"])
        if sealed is None:
            self.unsealed.append(_Unsealed(c["device_id"], c["seq"], row.get("window_id")))
            return
        if sealed.log_index >= self.horizon.log_size:
            self.report.readings_after_horizon += 1
            return
        self.report.readings_checked += 1
        self.seen.setdefault(sealed.log_index, set()).add(sealed.index_in_window)
        if sealed.leaf_hash != leaf:
            self.report.readings.append(ReadingFinding(
                "altered", rid, sealed.window_id,
                f"leaf {leaf.hex()} recomputed from InfluxDB, sealed {sealed.leaf_hash.hex()}"))

    def _mark_seen(self, row: dict[str, Any]) -> None:
        device_id, seq = row.get("device_id"), row.get("seq")
        if not isinstance(device_id, str) or type(seq) is not int:
            return
        sealed = self.view.locate(device_id, seq)
        if sealed is not None and sealed.log_index < self.horizon.log_size:
            self.seen.setdefault(sealed.log_index, set()).add(sealed.index_in_window)

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

    async def judge_unsealed(self, topic: str) -> None:
        """Readings stored but sealed nowhere: received (open window), in flight if sealed soon,
        else inserted.

        A point whose window is its partition's open window (on ``topic``, the raw topic) is
        counted as received and not judged (module docstring).  The others are waited for at
        most ``settle_s``: the stream appends to the ledger right after flushing its InfluxDB
        writes, so a reading still unsealed after that is not in flight.  Not filtered by
        ``received_us``: a stream catching up on a backlog seals readings received long ago, and
        a forger could write any value there.  The wait is paid only when such a point exists.
        """
        pending = self.unsealed
        deadline = time.monotonic() + self.horizon.settle_s
        while True:
            still = []
            positions: dict[int, Any] = {}  # one ledger read per partition and round

            def position_of(partition: int, cache: dict[int, Any] = positions) -> Any:
                if partition not in cache:
                    cache[partition] = self.view.position(topic, partition)
                return cache[partition]

            for u in pending:
                if self.view.locate(u.device_id, u.seq) is not None:
                    self.report.readings_after_horizon += 1
                elif open_window_state(u.window_id, position_of)[0]:
                    self.report.readings_received += 1
                else:
                    still.append(u)
            pending = still
            if not pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
        started = {(e.topic, e.partition, e.epoch): e for e in self.view.epochs()}
        for u in pending:
            self.report.readings_checked += 1
            lost = self._lost_with_epoch(u, topic, started)
            if lost is not None:
                self.received_lost.append(lost)
                continue
            _, why = open_window_state(u.window_id, lambda p: self.view.position(topic, p))
            self.report.readings.append(ReadingFinding(
                "inserted", reading_id(u.device_id, u.seq), None,
                f"stored in InfluxDB but sealed in no window ({why})"))

    @staticmethod
    def _lost_with_epoch(u: _Unsealed, topic: str,
                         started: dict[tuple[str, int, int], Any]) -> LossFinding | None:
        """A loss if ``u`` names a window of an ended epoch beyond what that epoch sealed.

        The stream stores readings on receipt; a reading of an open window whose records Kafka
        lost (a broker restart the worker holding the window did not survive as its owner) is
        never sealed.  Its point names a window starting past the old epoch's sealed offset, a
        window that can no longer be sealed by anyone: reported with the Kafka losses (the
        audit still fails: INCOMPLETE), not as an insertion.  A forger who names such a window
        gets the same verdict, and the point is withheld from clinicians either way.
        """
        parsed = parse_window_id(u.window_id)
        if parsed is None:
            return None
        partition, epoch, first = parsed
        ended = started.get((topic, partition, epoch + 1))
        if ended is None:
            return None  # that epoch has not ended: the window is sealed, open or impossible
        sealed = -1 if ended.prior_sealed_offset is None else ended.prior_sealed_offset
        if first <= sealed:
            return None
        return LossFinding(u.device_id, u.seq, u.seq, topic, partition, epoch, epoch + 1,
                           stored=True)


def window_readings_in_range(view: LedgerView, window: WindowInfo, start_us: int,
                             stop_us: int) -> list[IndexedReading]:
    return sorted((r for r in view.window_readings(window) if start_us <= r.ts_us <= stop_us),
                  key=lambda r: r.index_in_window)


def _window_changes(row: dict[str, Any], window: WindowInfo) -> WindowFinding | None:
    """A ``changed`` finding if the stored point differs from the sealed header."""
    header = window.header
    expected = {name: header[name] for name in WINDOW_FIELDS if name != "log_index"}
    expected["log_index"] = window.log_index
    changed = tuple(name for name in WINDOW_FIELDS if row.get(name) != expected[name])
    if str(row.get("partition")) != str(header["partition"]):
        changed += ("partition",)
    if not changed:
        return None
    detail = ", ".join(f"{n}: stored {row.get(n)!r}, sealed {expected.get(n, header.get(n))!r}"
                       for n in changed)
    return WindowFinding("changed", window.window_id, changed, detail)


async def _audit_windows(client: InfluxClient, view: LedgerView, report: AuditReport,
                         windows: list[WindowInfo], start_us: int, end_us: int,
                         chunker: _Chunker, horizon: Horizon) -> None:
    """``windows`` points against the ledger: missing, changed, or not sealed at all."""
    by_id = {w.window_id: w for w in windows}
    found: set[str] = set()
    lo = min([start_us, *(w.start_us for w in windows)])
    async for _, rows in _chunks(client, WINDOWS_MEASUREMENT, lo, end_us + 1, chunker):
        for row in rows:
            wid = str(row.get("window_id", ""))
            window = by_id.get(wid)
            if window is None:
                index = view.window_index(wid)
                if index is not None:
                    if index >= horizon.log_size:
                        report.windows_after_horizon += 1  # sealed while the audit ran
                    continue  # sealed, outside the range
                row_end = row.get("end_us")
                if isinstance(row_end, int | float) and row_end < start_us:
                    continue  # an unrelated window before the range
                # The stream writes a windows point only after the ledger append: not in flight.
                report.windows.append(WindowFinding(
                    "unsealed", wid, (), "a windows point in InfluxDB for no sealed window"))
                continue
            found.add(wid)
            change = _window_changes(row, window)
            if change:
                report.windows.append(change)
    for window in windows:
        if window.window_id in found:
            continue
        row = await _late_window_point(client, window, horizon)
        if row is None:
            report.windows.append(WindowFinding("missing", window.window_id, (),
                                                "sealed in the ledger, no windows point in InfluxDB"))
        elif change := _window_changes(row, window):
            report.windows.append(change)


async def _late_window_point(client: InfluxClient, window: WindowInfo,
                             horizon: Horizon) -> dict[str, Any] | None:
    """The window's point if it shows up within ``settle_s`` (only for windows sealed lately:
    the stream writes the point right after the ledger append)."""
    q = f"SELECT * FROM {quote_ident(WINDOWS_MEASUREMENT)} WHERE window_id = $w"
    deadline = time.monotonic() + horizon.settle_s
    while horizon.recent(window.sealed_at_us):
        rows = await client.query(q, params={"w": window.window_id}, epoch="ns")
        if rows:
            return rows[0]
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    return None


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
    started: those readings were acknowledged and sat in the old incarnation's memory.  Also
    when both are in the same epoch but the gap touches that epoch's edge for the device: the
    bridge retries a record Kafka refused while the broker went down, so a device's readings
    around a restart reach Kafka out of order (seen in the soak: seq 294 in the new incarnation,
    295 acknowledged by the old one just before it stopped, 296 in the new one).  Anything else
    stays an unexplained gap (deleted before sealing, or never sent).
    """
    started = {(e.topic, e.partition, e.epoch) for e in view.epochs()}
    gaps_left: list[GapFinding] = []
    lost: list[LossFinding] = []
    for gap in gaps:
        finding = _restart_loss(view, gap, started)
        if finding is None:
            gaps_left.append(gap)
        else:
            lost.append(finding)
    return gaps_left, lost


def _restart_loss(view: LedgerView, gap: GapFinding,
                  started: set[tuple[str, int, int]]) -> LossFinding | None:
    before = view.locate(gap.device_id, gap.first_missing - 1)
    after = view.locate(gap.device_id, gap.last_missing + 1)
    if before is None or after is None:
        return None
    a, b = view.window_place(before.log_index), view.window_place(after.log_index)
    if a is None or b is None or a[:2] != b[:2]:
        return None
    topic, partition = a[0], a[1]

    def loss(from_epoch: int, to_epoch: int) -> LossFinding | None:
        if all((topic, partition, e) in started for e in range(from_epoch + 1, to_epoch + 1)):
            return LossFinding(gap.device_id, gap.first_missing, gap.last_missing, topic,
                               partition, from_epoch, to_epoch)
        return None

    if b[2] > a[2]:
        return loss(a[2], b[2])
    if b[2] != a[2]:
        return None
    epoch = a[2]
    # The gap sits in the device's first window of its epoch, after a reading of an earlier one.
    span = view.device_span_in_window(before.log_index, gap.device_id)
    if span is not None and epoch > 0:
        earlier = view.adjacent(gap.device_id, span[0], above=False)
        place = view.window_place(earlier.log_index) if earlier else None
        if place is not None and place[:2] == a[:2] and place[2] < epoch:
            return loss(place[2], epoch)
    # Or in the device's last window of its epoch, before a reading of a later one.
    span = view.device_span_in_window(after.log_index, gap.device_id)
    if span is not None:
        later = view.adjacent(gap.device_id, span[1], above=True)
        place = view.window_place(later.log_index) if later else None
        if place is not None and place[:2] == a[:2] and place[2] > epoch:
            return loss(epoch, place[2])
    return None


def _running_max(ranges: list[tuple[int, int, int]]) -> list[int]:
    out, top = [], -1
    for _, last, _ in ranges:
        top = max(top, last)
        out.append(top)
    return out


async def run_audit(settings: Settings, start_us: int, end_us: int, rpc_url: str | None = None,
                    progress: Progress | None = None, target_rows: int = 20_000,
                    chunk_us: int = 60_000_000, settle_s: float = 10.0) -> AuditReport:
    """Audit ``[start_us, end_us]``; raises :class:`AuditUnavailable` if a service is down.

    Judges the window log as it was when the audit started (the horizon); ``settle_s`` bounds
    the wait for writes the stream has in flight at the horizon (see the module docstring).
    """
    if not 0 <= start_us <= end_us:
        raise ValueError(f"bad audit range {start_us}..{end_us}")
    if rpc_url:
        settings = settings.with_overrides(eth_rpc=rpc_url)
    try:
        view = LedgerView(settings.ledger_target)
    except LedgerUnavailable as exc:
        raise AuditUnavailable(str(exc)) from exc
    try:
        horizon = Horizon(time.time_ns() // 1000, view.log_size(), settle_s)
        report = AuditReport(start_us, end_us, horizon.at_us, horizon.log_size)
        windows = view.reading_windows(start_us, end_us, below_index=horizon.log_size)
        chunker = _Chunker(target_rows, chunk_us)
        try:
            async with InfluxClient(settings, retries=2) as client:
                readings = _ReadingAudit(view, report, windows, progress, horizon)
                async for chunk_end, rows in _chunks(client, READINGS_MEASUREMENT, start_us,
                                                     end_us + 1, chunker):
                    torn: list[dict[str, Any]] = []
                    for row in rows:
                        readings.check_row(row, torn)
                    for row in await reread_rows(client, torn):
                        readings.check_row(row)
                    readings.finish_before(chunk_end, start_us, end_us)
                readings.finish_before(2**63, start_us, end_us)  # windows reaching past the range
                await readings.judge_unsealed(settings.raw_topic)
                await _audit_windows(client, view, report, windows, start_us, end_us,
                                     _Chunker(target_rows, chunk_us * 60), horizon)
        except InfluxError as exc:
            raise AuditUnavailable(f"InfluxDB: {exc}") from exc
        gaps, lost = _split_losses(view, _gaps(view, windows))
        report.gaps.extend(gaps)
        report.lost.extend(lost)
        covered = {(f.device_id, s) for f in lost for s in range(f.first_missing, f.last_missing + 1)}
        report.lost.extend(f for f in readings.received_lost
                           if (f.device_id, f.first_missing) not in covered)
        report.epochs.extend(view.epochs())  # rare, and context for any loss
        first_index = min((w.log_index for w in windows), default=None)
        try:
            await asyncio.to_thread(check_checkpoints, settings, view, report, first_index,
                                    horizon.log_size)
        except ChainUnavailable as exc:
            raise AuditUnavailable(str(exc)) from exc
    finally:
        view.close()
    return report
