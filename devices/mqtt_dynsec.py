"""The broker's access rules as Mosquitto dynamic-security objects (docs/DECISIONS.md D12).

Mosquitto 2.0's dynamic-security plugin keeps clients (username, password hash, roles) and roles
(ACL entries) in a JSON file it reads at start and rewrites after every change made through its
``$CONTROL/dynamic-security/v1`` topic, so users can be added while the broker runs, without the
SIGHUP that Mosquitto #2934 turns into lost readings (tests/test_mqtt_reload.py).

The rules are those of the former password file and ACL (D7):

- nothing is allowed unless a role allows it (``defaultACLAccess`` all false but unsubscribe);
- device ``d`` has its own role ``device:d`` that may publish to its shard's topic
  ``vitals/<shard>/d`` (``vitalchain.core.payload.shards``) and to the former ``vitals/d`` (devices
  not yet migrated), nothing else: the plugin of Mosquitto 2.0.11 substitutes no ``%u`` in role
  ACLs (measured), so one shared role cannot say "its own topic";
- every bridge user has the role ``vitalchain-bridge``: subscribe to (plainly or in a shared
  group) and receive ``vitals/#``;
- the probe has no role: it may connect, nothing else;
- the admin (``vitalchain-admin``) may only talk to the plugin's control topic.

Pure functions: no broker, no files but ``write_config``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from vitalchain.config import Settings
from vitalchain.core.payload.shards import device_topic
from vitalchain.devices.mqtt_auth import ADMIN_USER, PROBE_USER, is_bridge_user, is_reserved

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
ADMIN_ROLE = "vitalchain-admin"
BRIDGE_ROLE = "vitalchain-bridge"
DEVICE_ROLE_PREFIX = "device:"
SHARED_VITALS = "$share/+/vitals/#"
PLUGIN_FILE = "mosquitto_dynamic_security.so"
DEFAULT_SHARDS = Settings.mqtt_shards
_ITERATIONS = 101  # what the plugin itself writes for a new password (Mosquitto 2.0.11)

Json = dict[str, Any]


def _acl(acltype: str, topic: str) -> Json:
    return {"acltype": acltype, "topic": topic, "allow": True}


def default_access() -> Json:
    """What a client may do when none of its roles says otherwise: nothing but unsubscribe."""
    return {"publishClientSend": False, "publishClientReceive": False,
            "subscribe": False, "unsubscribe": True}


def static_roles() -> list[Json]:
    """The roles that exist whatever is provisioned (the non-secret part of the policy)."""
    control = "$CONTROL/dynamic-security/#"
    return [
        # Provisioning: the plugin's control topic only.
        {"rolename": ADMIN_ROLE,
         "acls": [_acl("publishClientSend", control), _acl("publishClientReceive", control),
                  _acl("subscribePattern", control)]},
        # A bridge instance: the only reader of device data, plain or in a shared-subscription
        # group (the plugin sees the whole "$share/<group>/vitals/+" filter).
        {"rolename": BRIDGE_ROLE,
         "acls": [_acl("subscribePattern", "vitals/#"), _acl("subscribePattern", SHARED_VITALS),
                  _acl("publishClientReceive", "vitals/#")]},
    ]


def policy() -> Json:
    """Default access and static roles: what deploy/mosquitto/dynsec-policy.json must equal."""
    return {"defaultACLAccess": default_access(), "roles": static_roles()}


def device_role(device_id: str, shard_count: int = DEFAULT_SHARDS) -> Json:
    """The role of one device: publish to its own topic (its shard's, or the former unsharded
    one during a migration), nothing else."""
    return {"rolename": DEVICE_ROLE_PREFIX + device_id,
            "acls": [_acl("publishClientSend", device_topic(device_id, shard_count)),
                     _acl("publishClientSend", f"vitals/{device_id}")]}


def roles_of(user: str) -> list[str]:
    """The role names a user gets: the whole access rule set, by kind of user."""
    if user == ADMIN_USER:
        return [ADMIN_ROLE]
    if is_bridge_user(user):
        return [BRIDGE_ROLE]
    if user == PROBE_USER:
        return []
    if is_reserved(user):
        raise ValueError(f"{user!r} is a reserved name but no known service user")
    return [DEVICE_ROLE_PREFIX + user]


def hashed(password: str, salt: bytes | None = None) -> Json:
    """The plugin's password fields: PBKDF2-HMAC-SHA512 over the raw salt, base64 encoded."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": _ITERATIONS}


def render_config(users: dict[str, str], admin_password: str,
                  shard_count: int = DEFAULT_SHARDS) -> Json:
    """The plugin's whole configuration for these users (and the admin)."""
    everyone = {**users, ADMIN_USER: admin_password}
    clients = [{"username": user, **hashed(password),
                "roles": [{"rolename": role} for role in roles_of(user)]}
               for user, password in sorted(everyone.items())]
    device_roles = [device_role(user, shard_count) for user in sorted(users)
                    if roles_of(user) and roles_of(user)[0].startswith(DEVICE_ROLE_PREFIX)]
    return {"defaultACLAccess": default_access(), "clients": clients, "groups": [],
            "roles": static_roles() + device_roles}


def write_config(path: Path, users: dict[str, str], admin_password: str,
                 shard_count: int = DEFAULT_SHARDS) -> None:
    """Write the configuration (password hashes: mode 0600) for a broker about to start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(render_config(users, admin_password, shard_count), handle, indent=1)
    os.replace(tmp, path)


def create_commands(user: str, password: str, shard_count: int = DEFAULT_SHARDS) -> list[Json]:
    """Control commands that add one user (and a device's role) to a running broker."""
    commands: list[Json] = []
    roles = roles_of(user)
    if roles and roles[0].startswith(DEVICE_ROLE_PREFIX):
        commands.append({"command": "createRole", **device_role(user, shard_count)})
    commands.append({"command": "createClient", "username": user, "password": password,
                     "roles": [{"rolename": role} for role in roles]})
    return commands


def delete_commands(user: str) -> list[Json]:
    """Control commands that remove one user (the plugin disconnects it) and a device's role."""
    commands: list[Json] = [{"command": "deleteClient", "username": user}]
    roles = roles_of(user)
    if roles and roles[0].startswith(DEVICE_ROLE_PREFIX):
        commands.append({"command": "deleteRole", "rolename": roles[0]})
    return commands
