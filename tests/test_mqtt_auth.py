"""The credential store's rules, without a broker: who gets which ACL block, which names a device
may not take (D7: client id = username, one user per bridge instance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from vitalchain.devices.mqtt_auth import (
    BRIDGE_USER,
    PROBE_USER,
    MqttCredentials,
    bridge_user,
    render_acl,
)
from vitalchain.ingest.bridge import client_id

from vitalchain.app.commands.bridge import bridge as bridge_group
from vitalchain.config import load_settings


def _acl_users(creds: MqttCredentials) -> dict[str, list[str]]:
    """user -> its topic lines, parsed from the generated ACL file."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in creds.acl_file.read_text().splitlines():
        if line.startswith("user "):
            current = line.split(None, 1)[1]
            blocks[current] = []
        elif line.startswith("topic ") and current is not None:
            blocks[current].append(line)
        elif line.startswith("pattern "):
            current = None
    return blocks


def test_each_bridge_instance_is_its_own_reader_and_its_client_id(tmp_path: Path) -> None:
    creds = MqttCredentials(tmp_path)
    creds.ensure_service_users()
    assert _acl_users(creds) == {BRIDGE_USER: ["topic read vitals/#"], PROBE_USER: []}
    assert creds.ensure_bridge_user(7) is True
    assert creds.ensure_bridge_user(7) is False  # kept, password unchanged
    creds.add_users({"dev-1": None})
    assert _acl_users(creds) == {BRIDGE_USER: ["topic read vitals/#"],
                                 bridge_user(7): ["topic read vitals/#"], PROBE_USER: []}
    assert client_id(7) == bridge_user(7) == "vitalchain-bridge-7"
    passwd_users = {line.split(":", 1)[0] for line in creds.password_file.read_text().splitlines()}
    assert passwd_users == {BRIDGE_USER, bridge_user(7), PROBE_USER, "dev-1"}


def test_devices_cannot_take_service_names(tmp_path: Path) -> None:
    creds = MqttCredentials(tmp_path)
    creds.ensure_service_users()
    for name in (bridge_user(3), BRIDGE_USER, PROBE_USER, "vitalchain-bridge", "vitalchain-x"):
        with pytest.raises(ValueError, match="reserved"):
            creds.add_users({name: None})
    with pytest.raises(ValueError):
        bridge_user(10000)
    with pytest.raises(ValueError):
        render_acl(["dev-1"])
    assert set(json.loads(creds.secrets_path.read_text())) == {BRIDGE_USER, PROBE_USER}


def test_stack_up_retires_the_old_shared_bridge_user(tmp_path: Path) -> None:
    creds = MqttCredentials(tmp_path)
    creds.secrets_path.parent.mkdir(parents=True)
    creds.secrets_path.write_text(json.dumps({"vitalchain-bridge": "old", "dev-1": "pw"}))
    creds.ensure_service_users()
    assert set(json.loads(creds.secrets_path.read_text())) == {BRIDGE_USER, PROBE_USER, "dev-1"}
    assert "vitalchain-bridge\n" not in creds.acl_file.read_text()


def test_bridge_provision_command_without_a_running_broker(tmp_path: Path) -> None:
    settings = load_settings(environ={}, state_dir=tmp_path)
    runner = CliRunner()
    first = runner.invoke(bridge_group, ["provision", "--instance", "12"], obj=settings)
    again = runner.invoke(bridge_group, ["provision", "--instance", "12"], obj=settings)
    assert (first.exit_code, again.exit_code) == (0, 0), first.output + again.output
    assert "vitalchain-bridge-12: created" in first.output
    assert "already provisioned" in again.output
    assert bridge_user(12) in _acl_users(MqttCredentials(tmp_path))
    bad = runner.invoke(bridge_group, ["provision", "--instance", "10000"], obj=settings)
    assert bad.exit_code == 2
