"""One verifier for every proof kind: consistency documents and access-entry proofs beside bundles.

Same report, same strict JSON, same exit statuses (0 valid/pending, 1 invalid, 2 unreadable).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vitalchain.app.commands.verify import verify_command
from vitalchain.core.integrity.example import (
    example_access_proof,
    example_bundle,
    example_consistency,
    example_signed_bundle,
)
from vitalchain.core.verify import FORMATS, verify_document


def _write(tmp_path: Path, name: str, doc: Any) -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_every_kind_verifies_through_one_entry_point() -> None:
    for doc in (example_bundle(), example_signed_bundle(), example_consistency(),
                example_access_proof()):
        report = verify_document(doc)
        assert report.status == "valid" and report.exit_code == 0 and not report.anchor_checked
    assert len(FORMATS) == 4


def test_unknown_or_missing_format_is_unreadable() -> None:
    for doc in ({"format": "vitalchain-proof/9"}, {}, [], None, "x"):
        report = verify_document(doc)
        assert report.status == "error" and report.exit_code == 2


@pytest.mark.parametrize("mutate,step", [
    (lambda d: d["old"].update(root="11" * 32), "consistency"),
    (lambda d: d["new"].update(size=5), "consistency"),
    (lambda d: d["path"].reverse(), "consistency"),
    (lambda d: d["path"].pop(), "consistency"),
])
def test_consistency_document_alterations_are_invalid(mutate: Any, step: str) -> None:
    doc = example_consistency()
    mutate(doc)
    report = verify_document(doc)
    assert report.status == "invalid" and report.failed_step == step and report.exit_code == 1


@pytest.mark.parametrize("mutate,problem", [
    (lambda d: d.pop("anchors"), "anchors"),
    (lambda d: d["old"].update(size=0), "old.size"),
    (lambda d: d["path"].append("XY" * 32), "path"),
    (lambda d: d["anchors"].update(new={"chain_id": 1}), "anchor"),
    (lambda d: d.update(hash="sha256"), "hash"),
])
def test_unreadable_consistency_documents_are_errors(mutate: Any, problem: str) -> None:
    doc = example_consistency()
    mutate(doc)
    report = verify_document(doc)
    assert report.status == "error" and problem in (report.error or ""), report.error


def test_unanchored_end_is_pending_offline() -> None:
    doc = example_consistency()
    doc["anchors"]["new"] = None
    assert verify_document(doc).status == "pending"
    access = example_access_proof()
    access["anchor"] = None
    assert verify_document(access).status == "pending"


@pytest.mark.parametrize("field", ["seq", "ts_us", "user", "role", "path", "query", "patient_id",
                                   "allowed", "status", "reason", "nonce"])
def test_any_changed_access_entry_field_is_invalid(field: str) -> None:
    doc = example_access_proof()
    value = doc["entry"][field]
    doc["entry"][field] = (not value if isinstance(value, bool) else value + 1 if isinstance(value, int)
                           else "x" if value is None else value + "x")
    report = verify_document(doc)
    assert report.status in ("invalid", "error"), report.to_dict()
    assert report.status == "error" or report.failed_step in ("entry-inclusion", "window-contents")


def test_access_window_and_checkpoint_alterations() -> None:
    doc = example_access_proof()
    doc["window"]["end_us"] += 1
    assert verify_document(doc).failed_step == "checkpoint"  # the header is the log leaf
    doc = example_access_proof()
    doc["window_proof"]["index"] = 2
    assert verify_document(doc).failed_step == "checkpoint"


def test_cli_verifies_all_kinds_with_one_exit_convention(tmp_path: Path) -> None:
    good = [_write(tmp_path, f"{k}.json", d) for k, d in
            (("b", example_bundle()), ("c", example_consistency()), ("a", example_access_proof()))]
    result = CliRunner().invoke(verify_command, good)
    assert result.exit_code == 0, result.output
    assert result.output.count("VALID (offline: hashes valid, anchor not checked)") == 3
    bad = copy.deepcopy(example_consistency())
    bad["old"]["root"] = "22" * 32
    result = CliRunner().invoke(verify_command, [*good, _write(tmp_path, "bad.json", bad), "--json"])
    assert result.exit_code == 1
    assert [r["status"] for r in json.loads(result.output)] == ["valid", "valid", "valid", "invalid"]
    text = json.dumps(example_access_proof())
    duplicated = text[:-1] + ', "hash": "blake3"}'
    for unreadable in (duplicated, text.replace('"status": 403', '"status": NaN'), "{"):
        result = CliRunner().invoke(verify_command, [*good, _write(tmp_path, "u.json", unreadable)])
        assert result.exit_code == 2, result.output
