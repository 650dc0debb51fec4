"""Device shards: which MQTT topic a device publishes to, and which topics a bridge reads.

Why shards: Mosquitto 2.0.11 does not restore a persistent session's *shared* subscriptions after a
restart (docs/DECISIONS.md D6), so several bridges cannot split the load through ``$share`` without
losing what devices publish while the broker comes back. Instead every device belongs to one of
``shard_count`` shards and publishes to ``vitals/<shard>/<device_id>``; each bridge subscribes
*plainly* (``vitals/<shard>/+``) to the shards it owns, with its own persistent session, which the
broker does restore. The shard is a pure function of the device id and the shard count, so
provisioning, the broker's access rules, the simulator and a second machine all agree without
sharing state; the count is fixed at install (changing it moves devices to other topics).
docs/DECISIONS.md D24 has the choice, docs/DEVICES.md *Shards* what firmware does.

The former topic ``vitals/<device_id>`` (no shard) stays accepted for devices not yet migrated: the
bridge that owns shard 0 also subscribes plainly to ``vitals/+`` (``LEGACY_FILTER``).

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re

TOPIC_ROOT = "vitals"
LEGACY_FILTER = f"{TOPIC_ROOT}/+"
MAX_SHARDS = 1024
_SHARD = re.compile(r"0|[1-9][0-9]{0,3}")


def shard_of(device_id: str, shard_count: int) -> int:
    """The device's shard: a stable hash of its id (BLAKE2b, 8 bytes) modulo the shard count."""
    check_shard_count(shard_count)
    digest = hashlib.blake2b(device_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count


def device_topic(device_id: str, shard_count: int) -> str:
    """The one topic a device publishes to: ``vitals/<shard>/<device_id>``."""
    return f"{TOPIC_ROOT}/{shard_of(device_id, shard_count)}/{device_id}"


def shard_filter(shard: int) -> str:
    """The plain subscription of one shard: ``vitals/<shard>/+``."""
    return f"{TOPIC_ROOT}/{shard}/+"


def split_topic(topic: str) -> tuple[int | None, str] | None:
    """``vitals/<shard>/<rest>`` -> (shard, rest); ``vitals/<rest>`` -> (None, rest); else None.

    Only the shape: whether ``rest`` is a valid device id, and whether the shard is the device's,
    is for the caller (the broker's ACL lets a device publish only to its own shard's topic)."""
    prefix = TOPIC_ROOT + "/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix):]
    head, slash, tail = rest.partition("/")
    if not slash:
        return None, rest
    if not _SHARD.fullmatch(head):
        return None
    return int(head), tail


def check_shard_count(shard_count: int) -> None:
    if not 1 <= shard_count <= MAX_SHARDS:
        raise ValueError(f"shard count must be within 1..{MAX_SHARDS}, not {shard_count}")


def parse_shards(text: str, shard_count: int) -> list[int]:
    """``"0,2"`` or ``"0-3"`` or ``"all"`` -> sorted distinct shards, each below ``shard_count``."""
    check_shard_count(shard_count)
    if text.strip() == "all":
        return list(range(shard_count))
    shards: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        if not _SHARD.fullmatch(low) or (dash and not _SHARD.fullmatch(high)):
            raise ValueError(f"{text!r} is not a shard list like '0,2' or '0-3' or 'all'")
        first, last = int(low), int(high) if dash else int(low)
        if first > last or last >= shard_count:
            raise ValueError(f"shards {part!r} outside 0..{shard_count - 1} "
                             f"(VITALCHAIN_MQTT_SHARDS={shard_count})")
        shards.update(range(first, last + 1))
    return sorted(shards)


def shards_of_bridge(index: int, bridges: int, shard_count: int) -> list[int]:
    """Shards of bridge ``index`` among ``bridges`` splitting all of them round-robin."""
    check_shard_count(shard_count)
    if not 0 <= index < bridges <= shard_count:
        raise ValueError(f"bridge {index} of {bridges}: need 0 <= index < bridges <= "
                         f"{shard_count} shards")
    return list(range(index, shard_count, bridges))
