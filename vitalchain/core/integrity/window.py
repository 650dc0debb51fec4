"""Window headers: what one sealed batch of readings commits to.

The header is the window's leaf in the log, so everything an auditor needs to judge the window
without its readings is in it: the reading tree's ``root`` and ``size``, the time span, and per
device the first and last sequence numbers and the count (``count < last_seq - first_seq + 1``
shows a gap inside the window; comparing with the previous window shows gaps between windows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .hashing import Hasher, blake3_hasher
from .leaves import reading_leaf_hash
from .merkle import root

WINDOW_FORMAT = "vitalchain-window/1"


def window_id(partition: int, first_offset: int, epoch: int = 0) -> str:
    """``"p<partition>-<first_offset>"`` in epoch 0, ``"p<partition>e<epoch>-<first_offset>"``
    after: a window is a contiguous offset range of one *incarnation* of a partition, and a
    recreated or restarted memory-only Kafka hands out the same offsets again (docs/STREAM.md)."""
    if epoch:
        return f"p{partition}e{epoch}-{first_offset}"
    return f"p{partition}-{first_offset}"


def build_window_header(
    readings: Sequence[Mapping[str, Any]],
    *,
    partition: int,
    first_offset: int,
    last_offset: int,
    salt_key_id: str,
    late: int = 0,
    leaf_hashes: Sequence[bytes] | None = None,
    hasher: Hasher = blake3_hasher,
    epoch: int = 0,
) -> dict[str, Any]:
    """Header of a window over ``readings`` (canonical objects, salt included, in window order).

    ``leaf_hashes`` may be passed to avoid hashing twice; they must be the readings' leaf
    hashes in the same order.  ``start_us``/``end_us`` are the min/max ``ts_us``; per device,
    ``first_seq``/``last_seq`` are the min/max ``seq`` present.  Raises ``ValueError`` for an
    empty window or a reading without integer ``ts_us``/``seq``.

    ``epoch`` is the partition's epoch (how many times its offsets started over); it is part of
    the window's identity and appears in the header only when non-zero, so epoch-0 headers are
    byte-identical to those sealed before epochs existed.
    """
    if not readings:
        raise ValueError("a window holds at least one reading")
    for name, value in (("partition", partition), ("first_offset", first_offset),
                        ("last_offset", last_offset), ("late", late), ("epoch", epoch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer")
    if last_offset < first_offset:
        raise ValueError("last_offset < first_offset")
    if leaf_hashes is None:
        leaf_hashes = [reading_leaf_hash(r, hasher) for r in readings]
    elif len(leaf_hashes) != len(readings):
        raise ValueError("leaf_hashes and readings differ in length")
    devices: dict[str, dict[str, int]] = {}
    stamps: list[int] = []
    for r in readings:
        ts, seq, dev = r.get("ts_us"), r.get("seq"), r.get("device_id")
        if not isinstance(ts, int) or not isinstance(seq, int) or not isinstance(dev, str):
            raise ValueError(f"reading needs str device_id, int seq and int ts_us: {dict(r)!r}")
        stamps.append(ts)
        d = devices.get(dev)
        if d is None:
            devices[dev] = {"first_seq": seq, "last_seq": seq, "count": 1}
        else:
            d["first_seq"] = min(d["first_seq"], seq)
            d["last_seq"] = max(d["last_seq"], seq)
            d["count"] += 1
    header: dict[str, Any] = {
        "format": WINDOW_FORMAT,
        "window_id": window_id(partition, first_offset, epoch),
        "partition": partition,
        "first_offset": first_offset,
        "last_offset": last_offset,
        "start_us": min(stamps),
        "end_us": max(stamps),
        "size": len(readings),
        "root": root(list(leaf_hashes), hasher).hex(),
        "devices": {k: devices[k] for k in sorted(devices)},
        "late": late,
        "salt_key_id": salt_key_id,
    }
    if epoch:
        header["epoch"] = epoch
    return header


def header_epoch(header: Mapping[str, Any]) -> int:
    """The epoch a window header belongs to (0 when the field is absent)."""
    epoch = header.get("epoch", 0)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
    return epoch
