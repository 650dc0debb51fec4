"""docs/PROOFS.md stays true: its worked example is regenerated and compared byte for byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

from vitalchain.core.integrity import (
    blake3_hasher,
    canonical_json,
    derive_salt,
    root,
)
from vitalchain.core.integrity.example import (
    EXAMPLE_KEY,
    example_bundle,
    example_windows,
    render_markdown,
)
from vitalchain.core.verify import verify_bundle

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROOFS.md"
BEGIN, END = "<!-- example:begin -->\n", "<!-- example:end -->"


def doc_example() -> str:
    text = DOC.read_text()
    return text[text.index(BEGIN) + len(BEGIN): text.index(END)]


def test_doc_example_matches_generator():
    assert doc_example() == render_markdown(), (
        "docs/PROOFS.md is stale: regenerate the example with "
        "`python -m vitalchain.integrity.example`"
    )


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
