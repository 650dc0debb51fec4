"""Assemble ``vitalchain-proof/1`` and ``/2`` bundles (the producer side; checking lives in verify).

``/2`` is ``/1`` plus ``device_signature`` (the device's signed message: key id, signature, every
reading of the message as sent) and ``device_key`` (the key's registration entry with its path to
the bundle's checkpoint); a reading that came unsigned gets a ``/1`` bundle as before.

:func:`build_bundle` re-checks everything it is handed before it emits a bundle, because a
proof service that hands out bundles that do not verify is worse than one that fails loudly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .canonical import canonical_json
from .devicekeys import ALG, SignatureError, check_signature, entry_public_key, load_public_key
from .hashing import blake3_hasher
from .leaves import reading_leaf_hash, window_leaf_hash
from .log import MerkleLog
from .merkle import inclusion_proof, root, verify_inclusion

PROOF_FORMAT = "vitalchain-proof/1"
PROOF_FORMAT_V2 = "vitalchain-proof/2"
PROOF_FORMATS = (PROOF_FORMAT, PROOF_FORMAT_V2)
ANCHOR_FIELDS = ("chain_id", "contract", "tx_hash", "block_number", "block_hash", "log_index")


def build_bundle(
    reading: Mapping[str, Any],
    reading_index: int,
    reading_leaf_hashes: Sequence[bytes],
    window_header: Mapping[str, Any],
    window_index: int,
    log: MerkleLog | Sequence[bytes],
    checkpoint_size: int,
    anchor: Mapping[str, Any] | None = None,
    device_signature: Mapping[str, Any] | None = None,
    device_key: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the proof bundle for one reading (``/2`` when ``device_signature`` is given).

    - ``reading``: the canonical reading (salt included), leaf ``reading_index`` of its window;
    - ``reading_leaf_hashes``: all leaf hashes of that window, in order;
    - ``window_header``: the window's header; it is leaf ``window_index`` of the log;
    - ``log``: a :class:`MerkleLog` of window leaf hashes, or the list of them (BLAKE3);
    - ``checkpoint_size``: size of the checkpoint to prove against (``window_index <
      checkpoint_size <= len(log)``), normally the latest anchored one;
    - ``anchor``: ``None`` (not anchored yet) or the dict of :data:`ANCHOR_FIELDS`;
    - ``device_signature``: ``{"key_id", "sig", "readings"}`` of the reading's signed message,
      with ``device_key`` (:func:`.devicekeys.build_key_proof`): checked here, bundle ``/2``.

    Raises ``ValueError`` if the pieces do not fit together (leaf not in window, header root
    or size different from the leaves, header not in the log, bad anchor fields).
    """
    if not isinstance(log, MerkleLog):
        log = MerkleLog(log, blake3_hasher)
    if log.hasher is not blake3_hasher:
        raise ValueError("bundles use BLAKE3; the log was built with another hash")
    reading_obj = dict(reading)
    header = dict(window_header)
    leaves = list(reading_leaf_hashes)
    if not 0 <= reading_index < len(leaves):
        raise ValueError(f"reading_index {reading_index} outside window of {len(leaves)}")
    leaf = reading_leaf_hash(reading_obj)
    if leaf != leaves[reading_index]:
        raise ValueError("reading does not hash to reading_leaf_hashes[reading_index]")
    if header.get("size") != len(leaves) or header.get("root") != root(leaves).hex():
        raise ValueError("window header's root/size do not match reading_leaf_hashes")
    if not 0 <= window_index < checkpoint_size <= log.size:
        raise ValueError(
            f"need 0 <= window_index ({window_index}) < checkpoint_size ({checkpoint_size})"
            f" <= log size ({log.size})"
        )
    wleaf = window_leaf_hash(header)
    if log.leaf(window_index) != wleaf:
        raise ValueError("window header does not hash to log leaf window_index")
    reading_path = inclusion_proof(leaves, reading_index)
    window_path = log.inclusion_proof(window_index, checkpoint_size)
    checkpoint_root = log.root(checkpoint_size)
    verify_inclusion(wleaf, window_index, checkpoint_size, window_path, checkpoint_root)
    if anchor is not None:
        missing = [f for f in ANCHOR_FIELDS if f not in anchor]
        if missing:
            raise ValueError(f"anchor lacks field(s) {missing}")
        anchor = {f: anchor[f] for f in ANCHOR_FIELDS}
    extra: dict[str, Any] = {}
    if device_signature is not None:
        if device_key is None:
            raise ValueError("a device signature needs the device key's proof")
        extra = _device_members(reading_obj, device_signature, device_key, window_index)
    return {
        "format": PROOF_FORMAT_V2 if extra else PROOF_FORMAT,
        "hash": "blake3",
        "reading": reading_obj,
        "reading_proof": {
            "index": reading_index,
            "size": len(leaves),
            "path": [p.hex() for p in reading_path],
        },
        "window": header,
        "window_proof": {
            "index": window_index,
            "size": checkpoint_size,
            "path": [p.hex() for p in window_path],
        },
        "checkpoint": {"size": checkpoint_size, "root": checkpoint_root.hex()},
        "anchor": anchor,
        **extra,
    }


def _device_members(reading: Mapping[str, Any], signed: Mapping[str, Any],
                    device_key: Mapping[str, Any], window_index: int) -> dict[str, Any]:
    """``device_signature`` and ``device_key`` of a ``/2`` bundle, checked (ValueError)."""
    entry = device_key["entry"]
    try:
        public = load_public_key(entry_public_key(entry))
        check_signature(public, signed["key_id"], signed["sig"], signed["readings"])
    except SignatureError as exc:
        raise ValueError(f"device signature: {exc}") from exc
    if entry["key_id"] != signed["key_id"] or entry["device_id"] != reading["device_id"]:
        raise ValueError("the device key's entry is not the signing key of this device")
    if device_key["window_proof"]["index"] >= window_index:
        raise ValueError("the device key was not registered before the reading's window")
    device_fields = canonical_json({k: v for k, v in reading.items() if k != "salt"})
    if not any(canonical_json(r) == device_fields for r in signed["readings"]):
        raise ValueError("the reading is not one of its signed message's readings")
    return {"device_signature": {"alg": ALG, "key_id": signed["key_id"], "sig": signed["sig"],
                                 "readings": list(signed["readings"])},
            "device_key": dict(device_key)}


CONSISTENCY_FORMAT = "vitalchain-consistency/1"


def build_consistency_document(log: MerkleLog, old_size: int, new_size: int,
                               old_anchor: Mapping[str, Any] | None,
                               new_anchor: Mapping[str, Any] | None) -> dict[str, Any]:
    """``vitalchain-consistency/1``: the log at ``old_size`` is a prefix of the log at ``new_size``
    (RFC 9162 consistency path), with the anchors of both checkpoints (docs/PROOFS.md section 8)."""
    return {
        "format": CONSISTENCY_FORMAT,
        "hash": "blake3",
        "old": {"size": old_size, "root": log.root(old_size).hex()},
        "new": {"size": new_size, "root": log.root(new_size).hex()},
        "path": [p.hex() for p in log.consistency_proof(old_size, new_size)],
        "anchors": {"old": None if old_anchor is None else dict(old_anchor),
                    "new": None if new_anchor is None else dict(new_anchor)},
    }
