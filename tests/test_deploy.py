"""deploy/ must stay true to the code: every setting it names exists, and its ACL is the local one."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from vitalchain.config import ENV_PREFIX, Settings
from vitalchain.stack.mqtt_auth import ACL_TEMPLATE, BRIDGE_USER, PROBE_USER

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_every_setting_in_compose_is_read_by_the_code() -> None:
    names = set(re.findall(rf"\b{ENV_PREFIX}([A-Z0-9_]+):", (DEPLOY / "compose.yaml").read_text()))
    known = {f.name.upper() for f in fields(Settings)}
    assert names, "compose.yaml names no settings"
    assert names - known == set()


def test_production_mosquitto_acl_matches_the_generated_one() -> None:
    def rules(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]

    generated = ACL_TEMPLATE.format(bridge=BRIDGE_USER, probe=PROBE_USER)
    assert rules((DEPLOY / "mosquitto" / "acl").read_text()) == rules(generated)
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "certfile" in conf


def test_readme_documents_every_setting() -> None:
    readme = (DEPLOY.parent / "README.md").read_text()
    missing = [f.name for f in fields(Settings) if f"`{ENV_PREFIX}{f.name.upper()}`" not in readme]
    assert missing == []


def test_readme_gives_the_two_commands_near_the_top() -> None:
    top = "\n".join((DEPLOY.parent / "README.md").read_text().splitlines()[:20])
    assert "make demo" in top and "make test" in top
