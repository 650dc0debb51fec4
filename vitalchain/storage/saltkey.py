"""The salt key: read from the file the operator provisions, created only in dev mode.

Key file: ``VITALCHAIN_SALT_KEY_FILE``, default ``<state_dir>/secrets/salt.key``, holding 64 hex
characters (32 random bytes). In dev mode it is created on first use (mode 0600, atomically); in
production mode a missing key is an error, since silently minting a new key would make replayed
readings hash differently from the sealed ones. Every stream worker of an installation reads the
same key, so on several machines the operator provisions the same file on each (no shared folder).
Salts themselves are computed in :mod:`vitalchain.core.integrity.salt`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from vitalchain.config import Settings
from vitalchain.core.integrity.salt import KEY_BYTES
from vitalchain.errors import InvalidInput


class SaltKeyError(InvalidInput):
    """The salt key file is missing (in production) or unreadable/malformed."""


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
