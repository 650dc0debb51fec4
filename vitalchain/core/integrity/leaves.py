"""What exactly gets hashed into a leaf: canonical readings and window headers.

Both tree levels use the same leaf rule, ``BLAKE3(0x00 || JCS(object))``.  The canonical
reading is exactly the device's fields plus the salt: nothing the pipeline adds (receive
time, late flag, window id) is hashed, so a reading's leaf depends only on what the device
sent and on the salt key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .canonical import canonical_json, reading_json
from .hashing import Hasher, blake3_hasher
from .salt import derive_salt

READING_FIELDS = ("device_id", "patient_id", "seq", "ts_us", "vitals")


def canonical_reading(reading: Mapping[str, Any], salt_key: bytes) -> dict[str, Any]:
    """The leaf object of a device reading: its device fields plus ``salt``.

    Extra fields (``received_us`` etc.) are dropped; a missing device field is a
    ``KeyError`` naming it.
    """
    missing = [f for f in READING_FIELDS if f not in reading]
    if missing:
        raise KeyError(f"reading lacks field(s) {missing}")
    obj = {f: reading[f] for f in READING_FIELDS}
    obj["salt"] = derive_salt(salt_key, reading["device_id"], reading["seq"])
    return obj


def reading_leaf_hash(reading: Mapping[str, Any], hasher: Hasher = blake3_hasher) -> bytes:
    """``H(0x00 || JCS(reading))`` for a canonical reading (salt included)."""
    obj = dict(reading)
    text = reading_json(obj)
    return hasher.leaf(canonical_json(obj) if text is None else text)


def window_leaf_hash(header: Mapping[str, Any], hasher: Hasher = blake3_hasher) -> bytes:
    """``H(0x00 || JCS(header))``: a window's leaf in the append-only log."""
    return hasher.leaf(canonical_json(dict(header)))
