"""Per-reading salts: deterministic, keyed, and the reason a proof leaks nothing.

A reading's leaf commits to its vital signs.  Without a salt, a sibling hash in *my* proof
could be brute-forced (heart rates and SpO2 have tiny ranges) to learn a *neighbour's*
readings.  Each reading therefore carries a 32-byte salt derived from a secret key and the
reading's identity::

    salt = BLAKE3-keyed(key, JCS(["vitalchain-salt/1", device_id, seq])).hex()

Deterministic, so replaying the same input reproduces the same leaves and roots; unguessable
without the key, so sibling hashes are opaque.  The key never leaves the host and nothing but
hashes goes on chain.

The key is read (and in dev mode created) by :mod:`vitalchain.storage.saltkey`; this module only
computes.

Rotation: start a new key file at a window boundary.  Each window header records
``salt_key_id`` (:func:`salt_key_id`: first 8 hex of ``BLAKE3(key)``) so the key for any
window can be found again; old keys must be kept to re-derive old salts.
"""

from __future__ import annotations

import blake3

from .canonical import salt_input_json

SALT_DOMAIN = "vitalchain-salt/1"
KEY_BYTES = 32


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ValueError(f"salt key must be {KEY_BYTES} bytes")


def derive_salt(key: bytes, device_id: str, seq: int) -> str:
    """The salt (64 lowercase hex) of reading ``(device_id, seq)`` under ``key``.

    Input is the JCS array ``["vitalchain-salt/1", device_id, seq]`` so that the encoding is
    unambiguous (no ``"a1"+"2"`` vs ``"a"+"12"`` collisions) and reproducible in any language.
    """
    _check_key(key)
    if not isinstance(device_id, str):
        raise TypeError("device_id must be a string")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValueError("seq must be a non-negative integer")
    message = salt_input_json(SALT_DOMAIN, device_id, seq)
    return blake3.blake3(message, key=key).hexdigest()


def salt_key_id(key: bytes) -> str:
    """Short public identifier of a salt key: first 8 hex characters of ``BLAKE3(key)``."""
    _check_key(key)
    return blake3.blake3(key).hexdigest()[:8]
