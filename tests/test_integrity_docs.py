"""docs/PROOFS.md stays true: its worked examples are regenerated and compared byte for byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vitalchain.core.integrity import (
    blake3_hasher,
    canonical_json,
    derive_salt,
    root,
)
from vitalchain.core.integrity.example import (
    EXAMPLE_KEY,
    RENDERERS,
    example_access_proof,
    example_bundle,
    example_consistency,
    example_windows,
    render_markdown,
)
from vitalchain.core.verify import verify_bundle, verify_document

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROOFS.md"
BEGIN, END = "<!-- example:begin -->\n", "<!-- example:end -->"


def doc_example() -> str:
    text = DOC.read_text()
    return text[text.index(BEGIN) + len(BEGIN): text.index(END)]


def test_doc_example_matches_generator():
    assert doc_example() == render_markdown(), (
        "docs/PROOFS.md is stale: regenerate the example with "
        "`python -m vitalchain.core.integrity.example reading`"
    )


def doc_section(kind: str) -> str:
    text = DOC.read_text()
    begin, end = f"<!-- {kind}-example:begin -->\n", f"<!-- {kind}-example:end -->"
    return text[text.index(begin) + len(begin): text.index(end)]


@pytest.mark.parametrize("kind", ["consistency", "access", "signed"])
def test_doc_examples_of_other_kinds_match_generator(kind: str) -> None:
    assert doc_section(kind) == RENDERERS[kind](), (
        f"docs/PROOFS.md is stale: regenerate with `python -m vitalchain.core.integrity.example {kind}`")


def test_doc_consistency_and_access_documents_verify_and_fail_when_altered() -> None:
    for kind, expected in (("consistency", example_consistency()), ("access", example_access_proof())):
        (text,) = re.findall(r"```json\n(.*?)\n```", doc_section(kind), re.S)
        doc = json.loads(text)
        assert doc == expected
        report = verify_document(doc)
        assert report.status == "valid" and not report.anchor_checked, report.to_dict()
    consistency = example_consistency()
    consistency["new"]["root"] = "00" * 32
    assert verify_document(consistency).failed_step == "consistency"
    access = example_access_proof()
    access["entry"]["allowed"] = True  # a refused request rewritten as allowed
    assert verify_document(access).failed_step == "entry-inclusion"


def test_doc_consistency_walk_needs_only_blake3() -> None:
    """The narrated RFC 9162 walk of section 8, recomputed with blake3 and nothing of vitalchain."""
    import blake3

    doc = example_consistency()
    node = lambda a, b: blake3.blake3(b"\x01" + a + b).digest()  # noqa: E731
    path = [bytes.fromhex(p) for p in doc["path"]]
    fn, sn = doc["old"]["size"] - 1, doc["new"]["size"] - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    assert (fr.hex(), sr.hex(), sn) == (doc["old"]["root"], doc["new"]["root"], 0)


def test_doc_bundle_verifies_and_numbers_are_independent():
    """Recompute the doc's bundle from its text with nothing but blake3 + the spec."""
    (bundle_text,) = re.findall(r"```json\n(.*?)\n```", doc_example(), re.S)
    bundle = json.loads(bundle_text)
    assert bundle == example_bundle()
    assert verify_bundle(bundle).status == "valid"

    import blake3

    reading = bundle["reading"]
    assert reading["salt"] == blake3.blake3(
        json.dumps(["vitalchain-salt/1", reading["device_id"], reading["seq"]],
                   separators=(",", ":")).encode(), key=EXAMPLE_KEY).hexdigest()
    assert reading["salt"] == derive_salt(EXAMPLE_KEY, reading["device_id"], reading["seq"])
    leaf = blake3.blake3(b"\x00" + canonical_json(reading)).digest()
    assert leaf.hex() in doc_example()
    readings, header = example_windows()[1]
    assert header["root"] == root([blake3_hasher.leaf(canonical_json(r)) for r in readings]).hex()
    assert bundle["checkpoint"]["root"] in doc_example()
