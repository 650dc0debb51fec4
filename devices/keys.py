"""Device signing keys: generated at provisioning, rotated, revoked, and logged in the window log.

Where each part lives, and why:

- the *private* key only in the device's own secrets, ``<state_dir>/secrets/device-keys/<device>.json``
  (mode 0600; a real wearable keeps it in its secure element and never hands it out);
- the *public* keys in ``<state_dir>/devices/keys.json``: every key event (register, revoke) as a
  ``vitalchain-device-key/1`` entry, with the window of the ledger it was sealed in;
- every entry's leaf in the ledger's anchored window log (``Ledger.append_entry_window``, as the
  access log does), sealed at once by the command that made it: so an auditor proves which key
  belonged to a device when a reading was sealed, and ``keys.json`` alone is never trusted (a
  proof carries the entry and its path to an anchored checkpoint).

Writes are serialised by the registry's lock. An entry is written to ``keys.json`` (unsealed)
before the ledger append and marked sealed after, so a crash in between is completed by the next
key operation (the append is idempotent for an identical window).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitalchain.config import Settings
from vitalchain.core.integrity.devicekeys import (
    KEY_PARTITION,
    KEY_TOPIC,
    PrivateKey,
    PublicKey,
    SignatureError,
    b64url,
    build_key_entry,
    build_key_window_header,
    entry_public_key,
    from_b64url,
    generate_private_key,
    key_entry_leaf,
    load_public_key,
    private_key_from_seed,
    public_key_bytes,
)
from vitalchain.core.timeutil import now_us
from vitalchain.devices.mqtt_auth import _write_private
from vitalchain.errors import InvalidInput
from vitalchain.storage.ledger import Ledger

log = logging.getLogger("vitalchain.devices.keys")


class DeviceKeyError(InvalidInput):
    """A key operation was refused (unknown device, no active key); the message says why."""


@dataclass(frozen=True)
class SigningKey:
    """A device's current private key (what the firmware signs with)."""

    key_id: str
    private_key: PrivateKey


@dataclass(frozen=True)
class KeyRecord:
    """One key of a device as the log has it."""

    device_id: str
    key_id: str
    public_key: bytes
    registered_seq: int
    revoked_seq: int | None


def keys_path(settings: Settings) -> Path:
    return settings.state_dir / "devices" / "keys.json"


def private_key_path(settings: Settings, device_id: str) -> Path:
    return settings.secrets_dir / "device-keys" / f"{device_id}.json"


def _load_entries(settings: Settings) -> list[dict[str, Any]]:
    path = keys_path(settings)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        rows = data["entries"]
        if not isinstance(rows, list):
            raise TypeError("entries is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise DeviceKeyError(f"{path} is not a device-key file: {exc}") from exc
    return rows


def _save_entries(settings: Settings, rows: list[dict[str, Any]]) -> None:
    path = keys_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"entries": rows}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def key_rows(settings: Settings) -> list[dict[str, Any]]:
    """Every key event: ``{"entry": <vitalchain-device-key/1>, "window_id": str | None}``."""
    return _load_entries(settings)


def records(settings: Settings) -> dict[str, list[KeyRecord]]:
    """Each device's keys in registration order, with the revocation that ended each (if any)."""
    result: dict[str, dict[str, KeyRecord]] = {}
    for row in _load_entries(settings):
        entry = row["entry"]
        device, key_id = entry["device_id"], entry["key_id"]
        keys = result.setdefault(device, {})
        if entry["action"] == "register":
            keys[key_id] = KeyRecord(device, key_id, entry_public_key(entry), entry["seq"], None)
        elif key_id in keys and keys[key_id].revoked_seq is None:
            old = keys[key_id]
            keys[key_id] = KeyRecord(device, key_id, old.public_key, old.registered_seq,
                                     entry["seq"])
    return {d: list(k.values()) for d, k in result.items()}


def active_key(settings: Settings, device_id: str) -> KeyRecord | None:
    live = [k for k in records(settings).get(device_id, []) if k.revoked_seq is None]
    return live[-1] if live else None


def signing_key(settings: Settings, device_id: str) -> SigningKey | None:
    """The device's own private key, or None if it has none (an unsigned legacy device)."""
    path = private_key_path(settings, device_id)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    seed = from_b64url(data["private_key"], 32, "private_key")
    return SigningKey(str(data["key_id"]), private_key_from_seed(seed))


def _store_private(settings: Settings, device_id: str, key: PrivateKey, key_id: str) -> None:
    seed = key.seed
    _write_private(private_key_path(settings, device_id),
                   json.dumps({"device_id": device_id, "key_id": key_id, "alg": "Ed25519",
                               "private_key": b64url(seed)}))


def _next_seq(rows: list[dict[str, Any]]) -> int:
    return (rows[-1]["entry"]["seq"] + 1) if rows else 1


def _seal(settings: Settings, rows: list[dict[str, Any]]) -> None:
    """Append every unsealed entry to the ledger as one device-key window; mark them sealed."""
    pending = [r for r in rows if r.get("window_id") is None]
    if not pending:
        return
    header = build_key_window_header([r["entry"] for r in pending])
    with Ledger(settings.ledger_target) as ledger:
        ledger.append_entry_window(KEY_TOPIC, KEY_PARTITION, header,
                                   [key_entry_leaf(r["entry"]) for r in pending])
    for row in pending:
        row["window_id"] = header["window_id"]
    _save_entries(settings, rows)


def _append(settings: Settings, rows: list[dict[str, Any]], action: str, device_id: str,
            public_key: bytes) -> dict[str, Any]:
    entry = build_key_entry(_next_seq(rows), now_us(), action, device_id, public_key)
    rows.append({"entry": entry, "window_id": None})
    return entry


def ensure_keys(settings: Settings, device_ids: list[str]) -> list[str]:
    """Give every listed device without an active key a new key pair (caller holds the registry
    lock); one device-key window for all of them. Returns the devices that got a key."""
    rows = _load_entries(settings)
    active = {d for d, keys in records(settings).items() if any(k.revoked_seq is None for k in keys)}
    made: list[str] = []
    for device_id in device_ids:
        if device_id in active and private_key_path(settings, device_id).is_file():
            continue
        _new_key(settings, rows, device_id)
        made.append(device_id)
    if made:
        _save_entries(settings, rows)
    _seal(settings, rows)
    return made


def _new_key(settings: Settings, rows: list[dict[str, Any]], device_id: str) -> dict[str, Any]:
    key = generate_private_key()
    entry = _append(settings, rows, "register", device_id, public_key_bytes(key))
    _store_private(settings, device_id, key, entry["key_id"])
    return entry


def rotate(settings: Settings, device_id: str) -> dict[str, Any]:
    """New key pair for ``device_id``; the old key is revoked in the same window. Readings signed
    with the old key stay verifiable (their bundles prove the old key's registration)."""
    rows = _load_entries(settings)
    old = active_key(settings, device_id)
    entry = _new_key(settings, rows, device_id)
    if old is not None:
        _append(settings, rows, "revoke", device_id, old.public_key)
    _save_entries(settings, rows)
    _seal(settings, rows)
    return entry


def revoke(settings: Settings, device_id: str) -> dict[str, Any]:
    """Revoke the device's active key: the bridge refuses its messages from now on
    (``bad_signature``) until the key is rotated."""
    old = active_key(settings, device_id)
    if old is None:
        raise DeviceKeyError(f"device {device_id!r} has no active key")
    rows = _load_entries(settings)
    entry = _append(settings, rows, "revoke", device_id, old.public_key)
    _save_entries(settings, rows)
    _seal(settings, rows)
    path = private_key_path(settings, device_id)
    path.unlink(missing_ok=True)  # a revoked key signs nothing any more
    return entry


class Keyring:
    """The bridge's view of the public keys: reloaded whenever ``keys.json`` changes, so a
    revocation applies to every message that reaches the bridge after it.

    Freshness is a ``stat`` of the file (mtime, size, inode: ``os.replace`` gives a new inode).
    Why not one per lookup: at 1,000 messages/s the stat and the path arithmetic were 6 % of the
    bridge's CPU. A lookup given ``arrived_ns`` (``time.monotonic_ns()`` when the message arrived)
    stats only if the message arrived after the last stat: that stat happened after the message
    came in, so it saw any change the device could have seen before sending it. Under load many
    queued messages share one stat; a lone message still gets its own. Without ``arrived_ns``
    every lookup stats, as before."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._path = os.fspath(keys_path(settings))  # a str: no path arithmetic per stat
        self._stamp: tuple[int, int, int] | None = None
        self._checked_ns = -1  # monotonic_ns just before the last stat
        self._keys: dict[tuple[str, str], tuple[PublicKey, bool]] = {}
        self.stats = 0  # stats made (the bench and tests read it)

    def _fresh(self, arrived_ns: int | None = None) -> None:
        if arrived_ns is not None and arrived_ns <= self._checked_ns and self._stamp is not None:
            return
        self._checked_ns = time.monotonic_ns()
        self.stats += 1
        try:
            st = os.stat(self._path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp == self._stamp:
            return
        keys: dict[tuple[str, str], tuple[PublicKey, bool]] = {}
        try:
            for device, recs in records(self.settings).items():
                for rec in recs:
                    keys[(device, rec.key_id)] = (load_public_key(rec.public_key),
                                                  rec.revoked_seq is not None)
        except (DeviceKeyError, SignatureError, ValueError, KeyError, TypeError) as exc:
            # Never trust a half-read file, never crash the bridge: every signed message is
            # refused (dead-lettered, so it can be replayed) until the file reads again.
            log.error("device-key file %s unreadable (%s): refusing signed messages",
                      keys_path(self.settings), exc)
            self._keys, self._stamp = {}, None
            raise SignatureError(f"the bridge cannot read the device-key file: {exc}") from None
        self._keys, self._stamp = keys, stamp

    def lookup(self, device_id: str, key_id: str,
               arrived_ns: int | None = None) -> PublicKey:
        """The device's registered, unrevoked key ``key_id``; raises SignatureError why not.
        ``arrived_ns``: when the message arrived (monotonic_ns), see the class doc."""
        self._fresh(arrived_ns)
        found = self._keys.get((device_id, key_id))
        if found is None:
            raise SignatureError(f"key {key_id[:40]!r} is not registered for device {device_id!r}")
        if found[1]:
            raise SignatureError(f"key {key_id} of device {device_id!r} is revoked")
        return found[0]
