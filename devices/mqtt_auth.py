"""Mosquitto users: who may exist, and the store of their passwords.

Every MQTT client authenticates: each device as its own user (its username is its device id), each
bridge instance ``n`` as ``vitalchain-bridge-<n>``, the stack's health probe as
``vitalchain-probe``, and the provisioning tools as ``vitalchain-admin``, the only user allowed to
change the broker's users. Mosquitto runs with ``use_username_as_clientid``: the broker replaces
every client id with the username, so a user's credentials are the only way to its client id, its
persistent session and what is queued there (docs/DECISIONS.md D7). That is why each bridge
instance has a user of its own: several bridges need distinct sessions, hence distinct usernames.

A device may write only ``vitals/<its id>`` and read nothing; only bridge users read ``vitals/#``
(the rules are Mosquitto dynamic-security roles, ``vitalchain.devices.mqtt_dynsec``, D12).
Passwords are random and kept under ``<state_dir>/secrets`` (mode 0600), never in the repository:
``mqtt-users.json`` holds the users every client needs (a bridge is given this file), and
``mqtt-admin.json`` the admin's password, which only provisioning reads. This store is the source
of truth: the broker's dynamic-security file is rendered from it whenever the local Mosquitto
starts, and users added while it runs reach it through ``vitalchain.devices.mqtt_admin``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

BRIDGE_USER_PREFIX = "vitalchain-bridge-"
MAX_BRIDGE_INSTANCE = 9999
PROBE_USER = "vitalchain-probe"
ADMIN_USER = "vitalchain-admin"
# Names no device may take: a device called like a bridge user would be granted the bridge's read.
RESERVED_PREFIX = "vitalchain-"
# Before D7 every bridge instance shared this user; ``ensure_service_users`` retires it.
LEGACY_USERS = ("vitalchain-bridge",)
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BRIDGE_USER_PATTERN = re.compile(rf"^{re.escape(BRIDGE_USER_PREFIX)}(0|[1-9][0-9]{{0,3}})$")


def bridge_user(instance: int) -> str:
    """The MQTT user (and, by ``use_username_as_clientid``, client id) of bridge instance ``n``."""
    if not 0 <= instance <= MAX_BRIDGE_INSTANCE:
        raise ValueError(f"bridge instance must be within 0..{MAX_BRIDGE_INSTANCE}, not {instance}")
    return f"{BRIDGE_USER_PREFIX}{instance}"


def is_bridge_user(user: str) -> bool:
    return _BRIDGE_USER_PATTERN.match(user) is not None


def is_reserved(user: str) -> bool:
    """True for names only the stack may create (service users, present or future)."""
    return user.startswith(RESERVED_PREFIX)


# Instance 0's user: the one ``stack up`` creates, and the bridge reader the tests use.
BRIDGE_USER = bridge_user(0)
SERVICE_USERS = (BRIDGE_USER, PROBE_USER)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


class MqttCredentials:
    """The credential store of one state folder: users to passwords, plus the admin's password."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.secrets_path = state_dir / "secrets" / "mqtt-users.json"
        self.admin_path = state_dir / "secrets" / "mqtt-admin.json"

    def _load(self) -> dict[str, str]:
        if self.secrets_path.is_file():
            return dict(json.loads(self.secrets_path.read_text()))
        return {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write of the store: devices and bridges are provisioned by
        separate processes (``devices provision``, ``bridge run``) sharing one state folder."""
        self.secrets_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.secrets_path.with_suffix(".lock"), "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def users(self) -> dict[str, str]:
        """Every user (not the admin) with its password."""
        return self._load()

    def password(self, user: str) -> str:
        users = self._load()
        if user not in users:
            hint = (f"`vitalchain bridge provision --instance {user[len(BRIDGE_USER_PREFIX):]}`"
                    if is_bridge_user(user) else "provision it first")
            raise KeyError(f"no MQTT credentials for {user!r}; {hint}")
        return users[user]

    def admin_password(self) -> str:
        """The admin's password, made on first use; kept apart from the users every client reads."""
        with self._locked():
            if self.admin_path.is_file():
                return str(json.loads(self.admin_path.read_text())[ADMIN_USER])
            password = secrets.token_urlsafe(24)
            _write_private(self.admin_path, json.dumps({ADMIN_USER: password}))
            return password

    def ensure_service_users(self) -> None:
        """The users ``stack up`` needs: the probe and bridge instance 0 (others on demand)."""
        with self._locked():
            current = self._load()
            for user in LEGACY_USERS:
                current.pop(user, None)
            for user in SERVICE_USERS:
                current.setdefault(user, secrets.token_urlsafe(24))
            self._save(current)

    def ensure_bridge_user(self, instance: int) -> bool:
        """Make bridge instance ``n``'s user if missing; True when it was created."""
        user = bridge_user(instance)
        with self._locked():
            current = self._load()
            if user in current:
                return False
            current[user] = secrets.token_urlsafe(24)
            self._save(current)
            return True

    def add_users(self, users: dict[str, str | None]) -> dict[str, str]:
        """Create device users (``None`` password: generate one); returns every user's password.

        Existing users keep their password; a different explicit one is refused, since changing
        a password would have to disconnect the device (``remove_users`` first). Names starting
        with ``vitalchain-`` are refused: they belong to the stack's services."""
        for user in users:
            if is_reserved(user):
                raise ValueError(f"MQTT user/device id {user!r} is reserved for vitalchain's "
                                 f"services (prefix {RESERVED_PREFIX!r})")
            if not DEVICE_ID_PATTERN.match(user):
                raise ValueError(f"invalid MQTT user/device id {user!r}")
        with self._locked():
            current = self._load()
            for user, password in users.items():
                if user in current:
                    if password is not None and password != current[user]:
                        raise ValueError(f"MQTT user {user!r} exists with another password")
                    continue
                current[user] = password or secrets.token_urlsafe(24)
            self._save(current)
            return current

    def remove_users(self, users: list[str]) -> None:
        with self._locked():
            current = self._load()
            for user in users:
                current.pop(user, None)
            self._save(current)

    def _save(self, users: dict[str, str]) -> None:
        _write_private(self.secrets_path, json.dumps(users, indent=1, sort_keys=True))
