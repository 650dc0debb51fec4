"""Formats of the access log's entries, windows and proofs (written by the API, read by the verifier).

Entry (hashed as ``BLAKE3(0x00 || JCS(entry))``, like a reading): ``{"format": "vitalchain-access/1",
"seq", "ts_us", "user", "role", "method", "path", "query", "patient_id", "allowed", "status",
"reason", "nonce"}``. Window header ``vitalchain-access-window/1``; proof document
``vitalchain-access-proof/1`` (docs/PROOFS.md, section "Access-entry proofs").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .canonical import canonical_json
from .hashing import blake3_hasher

ENTRY_FORMAT = "vitalchain-access/1"
WINDOW_FORMAT = "vitalchain-access-window/1"
PROOF_FORMAT = "vitalchain-access-proof/1"


def entry_leaf(entry: Mapping[str, Any]) -> bytes:
    """The leaf hash of an access entry: ``BLAKE3(0x00 || JCS(entry))``."""
    return blake3_hasher.leaf(canonical_json(dict(entry)))
