"""Formats of the access log's entries, windows and proofs (written by the API, read by the verifier).

Entry (hashed as ``BLAKE3(0x00 || JCS(entry))``, like a reading): ``{"format": "vitalchain-access/1",
"seq", "ts_us", "user", "role", "method", "path", "query", "patient_id", "allowed", "status",
"reason", "nonce"}``. Window header ``vitalchain-access-window/1``; proof document
``vitalchain-access-proof/1`` (docs/PROOFS.md, section "Access-entry proofs").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .canonical import canonical_json
from .hashing import blake3_hasher
from .log import MerkleLog
from .merkle import inclusion_proof, root

ENTRY_FORMAT = "vitalchain-access/1"
WINDOW_FORMAT = "vitalchain-access-window/1"
PROOF_FORMAT = "vitalchain-access-proof/1"
# Access windows are fenced like reading windows, on this pseudo-topic's partition 0.
ACCESS_TOPIC = "access-log"
ACCESS_PARTITION = 0


def entry_leaf(entry: Mapping[str, Any]) -> bytes:
    """The leaf hash of an access entry: ``BLAKE3(0x00 || JCS(entry))``."""
    return blake3_hasher.leaf(canonical_json(dict(entry)))


def entry_window_header(entries: Sequence[Mapping[str, Any]], window_format: str, id_prefix: str,
                        partition: int) -> dict[str, Any]:
    """The header of a window of log entries (consecutive ``seq``, in order): access entries
    here, device-key entries in :mod:`.devicekeys`; one shape, so one verifier rule for both."""
    stamps = [int(e["ts_us"]) for e in entries]
    return {"format": window_format, "window_id": f"{id_prefix}-{entries[0]['seq']}",
            "partition": partition, "first_offset": entries[0]["seq"],
            "last_offset": entries[-1]["seq"], "start_us": min(stamps), "end_us": max(stamps),
            "size": len(entries), "root": root([entry_leaf(e) for e in entries]).hex()}


def build_access_window_header(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The header of the access window holding ``entries`` (consecutive ``seq``, in order)."""
    return entry_window_header(entries, WINDOW_FORMAT, "access", ACCESS_PARTITION)


def build_access_proof(entry: Mapping[str, Any], index: int, leaf_hashes: Sequence[bytes],
                       window_header: Mapping[str, Any], window_index: int, log: MerkleLog,
                       checkpoint_size: int, checkpoint_root: str,
                       anchor: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``vitalchain-access-proof/1`` document of entry ``index`` of an access window that is
    leaf ``window_index`` of ``log``, proven against the checkpoint of ``checkpoint_size``."""
    return {
        "format": PROOF_FORMAT,
        "hash": "blake3",
        "entry": dict(entry),
        "entry_proof": {"index": index, "size": len(leaf_hashes),
                        "path": [p.hex() for p in inclusion_proof(list(leaf_hashes), index)]},
        "window": dict(window_header),
        "window_proof": {"index": window_index, "size": checkpoint_size,
                         "path": [p.hex() for p in log.inclusion_proof(window_index, checkpoint_size)]},
        "checkpoint": {"size": checkpoint_size, "root": checkpoint_root},
        "anchor": None if anchor is None else dict(anchor),
    }
