"""deploy/ must stay true to the code: every setting it names exists, and its ACL is the local one."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from vitalchain.devices.mqtt_auth import BRIDGE_USER, PROBE_USER, is_bridge_user, render_acl

from vitalchain.config import ENV_PREFIX, Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_every_setting_in_compose_is_read_by_the_code() -> None:
    names = set(re.findall(rf"\b{ENV_PREFIX}([A-Z0-9_]+):", (DEPLOY / "compose.yaml").read_text()))
    known = {f.name.upper() for f in fields(Settings)}
    assert names, "compose.yaml names no settings"
    assert names - known == set()


def test_production_mosquitto_acl_matches_the_generated_one() -> None:
    def rules(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]

    deployed = rules((DEPLOY / "mosquitto" / "acl").read_text())
    users = [line.split(None, 1)[1] for line in deployed if line.startswith("user ")]
    bridges = [u for u in users if is_bridge_user(u)]
    # Every ``user`` block is a bridge instance or the probe (no other reader can hide here), the
    # first bridge instance is there, and the rules are exactly what the code generates for them.
    assert set(users) - set(bridges) == {PROBE_USER}
    assert BRIDGE_USER in bridges and len(bridges) == len(set(bridges))
    assert deployed == rules(render_acl(bridges))
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "certfile" in conf
    # Client identity = username (D7), set on the listener (a listener option in Mosquitto 2.0).
    settings = [line.split() for line in conf.splitlines() if line.strip() and not line.startswith("#")]
    listener = next(i for i, words in enumerate(settings) if words[0] == "listener")
    assert ["use_username_as_clientid", "true"] in settings[listener:]


def test_readme_documents_every_setting() -> None:
    readme = (DEPLOY.parent / "README.md").read_text()
    missing = [f.name for f in fields(Settings) if f"`{ENV_PREFIX}{f.name.upper()}`" not in readme]
    assert missing == []


def test_readme_gives_the_two_commands_near_the_top() -> None:
    top = "\n".join((DEPLOY.parent / "README.md").read_text().splitlines()[:20])
    assert "make demo" in top and "make test" in top
