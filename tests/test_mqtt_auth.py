"""The credential store's rules, without a broker: who gets which role, which names a device may
not take (D7: client id = username, one user per bridge instance), and the dynamic-security
configuration Mosquitto starts from (D12)."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from vitalchain.app.commands.bridge import bridge as bridge_group
from vitalchain.app.stack.ports import free_ports
from vitalchain.config import load_settings
from vitalchain.devices.mqtt_auth import (
    ADMIN_USER,
    BRIDGE_USER,
    PROBE_USER,
    MqttCredentials,
    bridge_user,
)
from vitalchain.devices.mqtt_dynsec import (
    ADMIN_ROLE,
    BRIDGE_ROLE,
    create_commands,
    default_access,
    render_config,
    roles_of,
    write_config,
)
from vitalchain.ingest.bridge import client_id


def _grants(creds: MqttCredentials) -> dict[str, list[tuple[str, str]]]:
    """user -> the (acltype, topic) its roles allow, from the configuration Mosquitto would read."""
    config = render_config(creds.users(), creds.admin_password())
    roles = {r["rolename"]: [(a["acltype"], a["topic"]) for a in r["acls"] if a["allow"]]
             for r in config["roles"]}
    return {c["username"]: sorted(g for ref in c["roles"] for g in roles[ref["rolename"]])
            for c in config["clients"]}


READ_ALL = [("publishClientReceive", "vitals/#"), ("subscribePattern", "$share/+/vitals/#"),
            ("subscribePattern", "vitals/#")]


def test_each_bridge_instance_is_its_own_reader_and_its_client_id(tmp_path: Path) -> None:
    creds = MqttCredentials(tmp_path)
    creds.ensure_service_users()
    grants = _grants(creds)
    assert {u: g for u, g in grants.items() if u != ADMIN_USER} == {BRIDGE_USER: READ_ALL,
                                                                   PROBE_USER: []}
    assert creds.ensure_bridge_user(7) is True
    assert creds.ensure_bridge_user(7) is False  # kept, password unchanged
    creds.add_users({"dev-1": None})
    grants = _grants(creds)
    assert grants.pop(ADMIN_USER) == sorted(
        (t, "$CONTROL/dynamic-security/#")
        for t in ("publishClientSend", "publishClientReceive", "subscribePattern"))
    assert grants == {BRIDGE_USER: READ_ALL, bridge_user(7): READ_ALL, PROBE_USER: [],
                      # its shard's topic (shard_of("dev-1", 4) == 3) and the former unsharded one
                      "dev-1": [("publishClientSend", "vitals/3/dev-1"),
                                ("publishClientSend", "vitals/dev-1")]}
    assert client_id(7) == bridge_user(7) == "vitalchain-bridge-7"
    # Whatever no role allows is refused: only unsubscribing is free.
    assert default_access() == {"publishClientSend": False, "publishClientReceive": False,
                                "subscribe": False, "unsubscribe": True}


def test_devices_cannot_take_service_names(tmp_path: Path) -> None:
    creds = MqttCredentials(tmp_path)
    creds.ensure_service_users()
    for name in (bridge_user(3), BRIDGE_USER, PROBE_USER, ADMIN_USER, "vitalchain-bridge",
                 "vitalchain-x"):
        with pytest.raises(ValueError, match="reserved"):
            creds.add_users({name: None})
    with pytest.raises(ValueError):
        bridge_user(10000)
    with pytest.raises(ValueError, match="reserved"):
        roles_of("vitalchain-x")  # no role for a reserved name that is no known service
    assert roles_of(BRIDGE_USER) == [BRIDGE_ROLE] and roles_of(ADMIN_USER) == [ADMIN_ROLE]
    assert set(json.loads(creds.secrets_path.read_text())) == {BRIDGE_USER, PROBE_USER}


def test_an_existing_users_password_is_never_replaced(tmp_path: Path) -> None:
    creds = MqttCredentials(tmp_path)
    first = creds.add_users({"dev-1": None})["dev-1"]
    assert creds.add_users({"dev-1": None})["dev-1"] == first
    assert creds.add_users({"dev-1": first})["dev-1"] == first
    with pytest.raises(ValueError, match="another password"):
        creds.add_users({"dev-1": "something else"})


def test_stack_up_retires_the_old_shared_bridge_user(tmp_path: Path) -> None:
    creds = MqttCredentials(tmp_path)
    creds.secrets_path.parent.mkdir(parents=True)
    creds.secrets_path.write_text(json.dumps({"vitalchain-bridge": "old", "dev-1": "pw"}))
    creds.ensure_service_users()
    assert set(json.loads(creds.secrets_path.read_text())) == {BRIDGE_USER, PROBE_USER, "dev-1"}
    assert "vitalchain-bridge" not in _grants(creds)


def test_the_broker_configuration_holds_hashes_that_match_and_no_password(tmp_path: Path) -> None:
    creds = MqttCredentials(tmp_path)
    creds.ensure_service_users()
    users = creds.add_users({"dev-1": None, "dev-2": None})
    admin = creds.admin_password()
    assert admin not in creds.secrets_path.read_text()  # a bridge reads that file, not the admin's
    assert stat.S_IMODE(creds.admin_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(creds.secrets_path.stat().st_mode) == 0o600
    path = tmp_path / "mosquitto" / "dynamic-security.json"
    write_config(path, users, admin)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    config = json.loads(text)
    for password in (*users.values(), admin):
        assert password not in text
    everyone = {**users, ADMIN_USER: admin}
    assert {c["username"] for c in config["clients"]} == set(everyone)
    for client in config["clients"]:
        digest = hashlib.pbkdf2_hmac("sha512", everyone[client["username"]].encode(),
                                     base64.b64decode(client["salt"]), client["iterations"])
        assert base64.b64encode(digest).decode() == client["password"], client["username"]
    salts = [c["salt"] for c in config["clients"]]
    assert len(set(salts)) == len(salts)


def test_runtime_commands_give_a_device_its_own_role_only() -> None:
    commands = create_commands("dev-9", "pw")
    assert commands == [
        {"command": "createRole", "rolename": "device:dev-9",
         "acls": [{"acltype": "publishClientSend", "topic": "vitals/1/dev-9", "allow": True},
                  {"acltype": "publishClientSend", "topic": "vitals/dev-9", "allow": True}]},
        {"command": "createClient", "username": "dev-9", "password": "pw",
         "roles": [{"rolename": "device:dev-9"}]}]
    # The shard count (fixed at install) decides the shard topic: with one shard, shard 0.
    assert create_commands("dev-9", "pw", 1)[0]["acls"][0]["topic"] == "vitals/0/dev-9"
    assert create_commands(bridge_user(4), "pw") == [
        {"command": "createClient", "username": bridge_user(4), "password": "pw",
         "roles": [{"rolename": BRIDGE_ROLE}]}]


def test_bridge_provision_command_without_a_running_broker(tmp_path: Path) -> None:
    # A free port: nothing listens there, so no broker is told (not another stack's on 1883).
    (port,) = free_ports(1)
    settings = load_settings(environ={}, state_dir=tmp_path, mqtt_port=port)
    runner = CliRunner()
    first = runner.invoke(bridge_group, ["provision", "--instance", "12"], obj=settings)
    again = runner.invoke(bridge_group, ["provision", "--instance", "12"], obj=settings)
    assert (first.exit_code, again.exit_code) == (0, 0), first.output + again.output
    assert "vitalchain-bridge-12: created" in first.output
    assert "already provisioned" in again.output
    assert _grants(MqttCredentials(tmp_path))[bridge_user(12)] == READ_ALL
    bad = runner.invoke(bridge_group, ["provision", "--instance", "10000"], obj=settings)
    assert bad.exit_code == 2
