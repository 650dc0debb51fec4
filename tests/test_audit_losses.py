"""How the audit report tells readings lost in a Kafka restart apart from tampering (pure)."""

from __future__ import annotations

from vitalchain.audit.report import AuditReport, GapFinding, LossFinding, ReadingFinding
from vitalchain.storage.ledger import EpochRecord


def test_losses_alone_make_the_audit_incomplete_not_tampered() -> None:
    report = AuditReport(0, 10)
    report.lost.append(LossFinding("dev1", 30, 34, "vitals.raw", 2, 0, 1))
    report.epochs.append(EpochRecord("vitals.raw", 2, 1, 5, "offsets went backwards", 59, 65))
    assert not report.ok and not report.tampered
    text = report.to_text()
    assert ("LOST IN A KAFKA RESTART: dev1#30..34 (5 missing): sealed readings of the device "
            "surround it in epochs 0 and 1 of vitals.raw[2]") in text
    assert "Kafka held 5 records beyond it" in text
    assert text.splitlines()[-1] == (
        "INCOMPLETE: nothing altered, deleted, inserted or unanchored, but 5 readings "
        "acknowledged to devices were lost in Kafka restarts before they were sealed "
        "(not tampering) (checkpoints not checked on chain)")
    assert report.verdict == "incomplete" and report.exit_code == 1
    data = report.to_dict()
    assert data["ok"] is False and data["lost_count"] == 5 and data["gaps"] == []
    assert data["lost"][0]["cause"] == "kafka_restart" and data["lost"][0]["count"] == 5
    assert data["epochs"][0]["unsealed_records"] == 5


def test_losses_never_hide_tampering() -> None:
    report = AuditReport(0, 10)
    report.gaps.append(GapFinding("dev2", 4, 4))  # information only (docs/DEVICES.md): not tampering
    report.lost.append(LossFinding("dev1", 30, 30, "vitals.raw", 2, 0, 1))
    assert not report.tampered and report.verdict == "incomplete"
    report.readings.append(ReadingFinding("altered", "dev3#7", "p0-0", "leaf differs"))
    assert report.tampered and report.verdict == "findings"
    assert report.to_text().splitlines()[-1] == (
        "FAILED: 1 findings (checkpoints not checked on chain); besides, 1 readings acknowledged "
        "to devices were lost in Kafka restarts before they were sealed (not tampering)")
