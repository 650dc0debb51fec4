"""The audit's completeness check at an epoch's edge: readings a Kafka restart lost although both
neighbours are sealed in the same epoch (the bridge retries a record the stopping broker refused,
so a device's readings around a restart reach Kafka out of order: in a soak seq 294 landed in the
new incarnation, 295 in the old one just before it stopped, 296 in the new one). Such a gap is a
loss in that restart, named as one; a gap inside an epoch, away from its edges, stays a gap.

A real ledger file (SQLite) and the audit's own read-only view; no services needed.
"""

from __future__ import annotations

from pathlib import Path

from tests.test_ledger import KEY, T0
from vitalchain.audit.engine import _gaps, _split_losses
from vitalchain.core.integrity import build_window_header, canonical_reading, reading_leaf_hash
from vitalchain.storage.ledger import Ledger, ReadingIndexRow
from vitalchain.storage.ledger_view import LedgerView

TOPIC = "raw"


def seal(ledger: Ledger, first_offset: int, seqs: list[int], epoch: int,
         device: str = "d1") -> None:
    """One window of partition 0 holding ``seqs`` of ``device`` at consecutive offsets."""
    readings = [canonical_reading({"device_id": device, "patient_id": "p", "seq": s,
                                   "ts_us": T0 + s * 500_000,
                                   "vitals": {"hr": 70, "spo2": 97, "rr": 14, "temp_c": 36.6,
                                              "sys": 120, "dia": 80}}, KEY) for s in seqs]
    leaves = [reading_leaf_hash(r) for r in readings]
    last_offset = first_offset + len(seqs) - 1
    header = build_window_header(readings, partition=0, first_offset=first_offset,
                                 last_offset=last_offset, salt_key_id="k", leaf_hashes=leaves,
                                 epoch=epoch)
    rows = [ReadingIndexRow(r["device_id"], r["seq"], r["ts_us"], i, leaf)
            for i, (r, leaf) in enumerate(zip(readings, leaves, strict=True))]
    ledger.append_window(TOPIC, 0, header, leaves, rows, idle_cut=False)


def findings(path: Path) -> tuple[list, list]:
    with LedgerView(path) as view:
        windows = view.reading_windows(0, 2**62)
        return _split_losses(view, _gaps(view, windows))


def test_a_gap_in_a_devices_first_window_of_a_new_epoch_is_a_restart_loss(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        seal(ledger, 0, [0, 1, 2, 3], epoch=0)
        assert ledger.begin_epoch(TOPIC, 0, 0, "test: broker restarted") == 1
        seal(ledger, 0, [4, 6, 7], epoch=1)  # 5 went to the old incarnation after 4 was refused
        seal(ledger, 3, [8, 9, 11], epoch=1)  # 10: inside the epoch, away from its edge
    gaps, lost = findings(path)
    assert [(g.first_missing, g.last_missing) for g in gaps] == [(10, 10)]
    assert [(f.first_missing, f.last_missing, f.from_epoch, f.to_epoch) for f in lost] == [
        (5, 5, 0, 1)]


def test_a_gap_in_a_devices_last_window_of_an_ended_epoch_is_a_restart_loss(
        tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        seal(ledger, 0, [0, 1, 2], epoch=0)
        seal(ledger, 3, [3, 5, 6], epoch=0)  # 4 reached the old Kafka after 5 and 6: lost
        assert ledger.begin_epoch(TOPIC, 0, 0, "test: broker restarted") == 1
        seal(ledger, 0, [7, 8, 9], epoch=1)
    gaps, lost = findings(path)
    assert gaps == []
    assert [(f.first_missing, f.last_missing, f.from_epoch, f.to_epoch) for f in lost] == [
        (4, 4, 0, 1)]


def test_without_an_epoch_an_edge_gap_stays_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as ledger:
        seal(ledger, 0, [0, 1, 2], epoch=0)
        seal(ledger, 3, [3, 5, 6], epoch=0)
        seal(ledger, 6, [7, 8, 9], epoch=0)
    gaps, lost = findings(path)
    assert [(g.first_missing, g.last_missing) for g in gaps] == [(4, 4)] and lost == []
