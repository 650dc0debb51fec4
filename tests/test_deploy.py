"""deploy/ must stay true to the code: every setting it names exists, and its ACL is the local one."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

from click.testing import CliRunner

from vitalchain.app.cli import main as cli_main
from vitalchain.config import ENV_PREFIX, Settings
from vitalchain.devices.mqtt_auth import ADMIN_USER, BRIDGE_USER, PROBE_USER, MqttCredentials
from vitalchain.devices.mqtt_dynsec import ADMIN_ROLE, BRIDGE_ROLE, policy

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_every_setting_in_compose_is_read_by_the_code() -> None:
    names = set(re.findall(rf"\b{ENV_PREFIX}([A-Z0-9_]+):", (DEPLOY / "compose.yaml").read_text()))
    known = {f.name.upper() for f in fields(Settings)}
    assert names, "compose.yaml names no settings"
    assert names - known == set()


def test_production_mosquitto_policy_matches_the_generated_one(tmp_path: Path) -> None:
    deployed = json.loads((DEPLOY / "mosquitto" / "dynsec-policy.json").read_text())
    # The roles and default access are exactly what the code generates: the admin's control
    # topic, the bridge's read of vitals/#, nothing else; no other reader can hide here.
    assert deployed == policy()
    assert {r["rolename"] for r in deployed["roles"]} == {ADMIN_ROLE, BRIDGE_ROLE}
    # The file `devices broker-config` writes for production starts from that very policy, plus
    # one client per user of the store (hashes only) and one publish-only role per device.
    creds = MqttCredentials(tmp_path)
    creds.ensure_service_users()
    creds.add_users({"dev-1": None})
    out = tmp_path / "dynamic-security.json"
    result = CliRunner().invoke(cli_main, ["devices", "broker-config", str(out)],
                                env={"VITALCHAIN_STATE_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["defaultACLAccess"] == deployed["defaultACLAccess"]
    assert written["roles"][:len(deployed["roles"])] == deployed["roles"]
    assert {c["username"] for c in written["clients"]} == {BRIDGE_USER, PROBE_USER, ADMIN_USER,
                                                            "dev-1"}
    assert not any(password in out.read_text() for password in creds.users().values())

    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    settings_lines = [line.split() for line in conf.splitlines()
                      if line.strip() and not line.startswith("#")]
    options = {words[0]: words[1:] for words in settings_lines}
    assert options["allow_anonymous"] == ["false"] and "certfile" in options
    # Users come from the plugin only: no password file or ACL that would need a SIGHUP (D12).
    assert "password_file" not in options and "acl_file" not in options
    assert options["plugin"][0].endswith("/mosquitto_dynamic_security.so")
    assert options["plugin_opt_config_file"][0].startswith("/mosquitto/data/")  # writable volume
    # Client identity = username (D7), set on the listener (a listener option in Mosquitto 2.0).
    listener = next(i for i, words in enumerate(settings_lines) if words[0] == "listener")
    assert ["use_username_as_clientid", "true"] in settings_lines[listener:]


def test_readme_documents_every_setting() -> None:
    readme = (DEPLOY.parent / "README.md").read_text()
    missing = [f.name for f in fields(Settings) if f"`{ENV_PREFIX}{f.name.upper()}`" not in readme]
    assert missing == []


def test_readme_gives_the_two_commands_near_the_top() -> None:
    top = "\n".join((DEPLOY.parent / "README.md").read_text().splitlines()[:20])
    assert "make demo" in top and "make test" in top
