"""Per-reading salts: deterministic, keyed, and the reason a proof leaks nothing.

A reading's leaf commits to its vital signs.  Without a salt, a sibling hash in *my* proof
could be brute-forced (heart rates and SpO2 have tiny ranges) to learn a *neighbour's*
readings.  Each reading therefore carries a 32-byte salt derived from a secret key and the
reading's identity::

    salt = BLAKE3-keyed(key, JCS(["vitalchain-salt/1", device_id, seq])).hex()

Deterministic, so replaying the same input reproduces the same leaves and roots; unguessable
without the key, so sibling hashes are opaque.  The key never leaves the host and nothing but
hashes goes on chain.

Key file: ``VITALCHAIN_SALT_KEY_FILE``, default ``<state_dir>/secrets/salt.key``, holding 64
hex characters (32 random bytes).  In dev mode it is created on first use (mode 0600); in
production mode a missing key is an error, since silently minting a new key would make
replayed readings hash differently from the sealed ones.

Rotation: start a new key file at a window boundary.  Each window header records
``salt_key_id`` (:func:`salt_key_id`: first 8 hex of ``BLAKE3(key)``) so the key for any
window can be found again; old keys must be kept to re-derive old salts.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import blake3

from vitalchain.errors import InvalidInput

from .canonical import canonical_json

if TYPE_CHECKING:
    from vitalchain.config import Settings

SALT_DOMAIN = "vitalchain-salt/1"
KEY_BYTES = 32


class SaltKeyError(InvalidInput):
    """The salt key file is missing (in production) or unreadable/malformed."""


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
    message = canonical_json([SALT_DOMAIN, device_id, seq])
    return blake3.blake3(message, key=key).hexdigest()


def salt_key_id(key: bytes) -> str:
    """Short public identifier of a salt key: first 8 hex characters of ``BLAKE3(key)``."""
    _check_key(key)
    return blake3.blake3(key).hexdigest()[:8]


def salt_key_path(settings: Settings) -> Path:
    """Where the salt key lives: ``settings.salt_key_file`` or ``<secrets_dir>/salt.key``."""
    if settings.salt_key_file:
        return Path(settings.salt_key_file)
    return Path(settings.secrets_dir) / "salt.key"


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise SaltKeyError(f"cannot read salt key file {path}: {exc}") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise SaltKeyError(f"salt key file {path} must hold {2 * KEY_BYTES} hex characters")
    return key


def load_or_create_salt_key(settings: Settings) -> bytes:
    """Return the 32-byte salt key, creating it in dev mode only.

    Production refuses to create one (:class:`SaltKeyError`): the operator provisions it.
    Creation is atomic (``O_EXCL``), so two processes starting together end up with one key.
    """
    path = salt_key_path(settings)
    if path.exists():
        return _read_key(path)
    if settings.mode != "dev":
        raise SaltKeyError(
            f"salt key file {path} does not exist; in production mode it is never created "
            "automatically: write 32 random bytes as hex there (or set VITALCHAIN_SALT_KEY_FILE)"
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(KEY_BYTES) + "\n")
    return _read_key(path)
