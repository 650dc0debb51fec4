"""README.md and docs/ say what the code does, for every shape a test can check.

- the settings table in README lists exactly the fields of ``Settings``, with their defaults;
- every MQTT topic or filter the docs name (``vitals/+``, ``vitals/<shard>/+``,
  ``$share/NAME/vitals/#``, ``vitals/#``, ``vitals/%u``, ``vitals/<shard>/<device_id>``,
  ``vitals/<device_id>``) is the one the bridge subscribes to, the ACL grants or a
  device publishes to, and the Kafka topics are the settings' defaults;
- every ``vitalchain COMMAND [SUBCOMMAND]`` the docs show exists;
- THREAT_MODEL's "access log" asset is the API's access log, not the dead-letter topic.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import click
import pytest

from vitalchain.app.cli import COMMANDS, main
from vitalchain.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _settings_rows() -> dict[str, str]:
    rows = re.findall(r"^\| `VITALCHAIN_([A-Z0-9_]+)` \|\s*([^|]*?)\s*\|", (ROOT / "README.md").read_text(), re.M)
    return {name.lower(): default.strip() for name, default in rows}


def test_the_settings_table_lists_every_setting_once() -> None:
    documented = re.findall(r"^\| `VITALCHAIN_([A-Z0-9_]+)` \|", (ROOT / "README.md").read_text(), re.M)
    assert sorted(n.lower() for n in documented) == sorted(f.name for f in fields(Settings))


@pytest.mark.parametrize("name", [f.name for f in fields(Settings)])
def test_each_documented_default_is_the_code_default(name: str) -> None:
    shown = _settings_rows()[name]
    default = {f.name: f.default for f in fields(Settings)}[name]
    literal = re.fullmatch(r"`([^`<]*)`", shown)
    if literal is None:  # derived ("(host)", "<state>/...") or empty: say so, no literal
        assert default in ("", None), f"{name}: README shows {shown!r}, the code's default is {default!r}"
        return
    if isinstance(default, float | int):
        assert float(literal.group(1)) == default, name
    else:
        assert literal.group(1) == str(default), name


TOPIC = re.compile(r"(?:\$share/[A-Za-z<>_.-]+/)?vitals/[^\s`\"),|:;\]]+")


def _topic_shapes() -> dict[str, bool]:
    """Every topic or filter shape the docs may name -> whether the code agrees."""
    from vitalchain.core.payload.shards import device_topic, shard_of
    from vitalchain.devices import mqtt_dynsec
    from vitalchain.devices.registry import DeviceIdentity
    from vitalchain.ingest.bridge import SUBSCRIPTION, Bridge

    roles = {role["rolename"]: role for role in mqtt_dynsec.static_roles()}
    bridge = {(acl["acltype"], acl["topic"]) for acl in roles[mqtt_dynsec.BRIDGE_ROLE]["acls"]}
    device = {(acl["acltype"], acl["topic"]) for acl in mqtt_dynsec.device_role("dev-1")["acls"]}
    return {
        # the former unsharded topics: read by the owner of shard 0 only
        "vitals/+": SUBSCRIPTION == "vitals/+" and "vitals/+" in Bridge(Settings(), shards=[0]).subscriptions
        and "vitals/+" not in Bridge(Settings(), shards=[1]).subscriptions,
        "vitals/<shard>/+": Bridge(Settings(), shards=[1]).subscriptions == ["vitals/1/+"],
        "vitals/0/+": Bridge(Settings(), shards=[0]).subscriptions == ["vitals/0/+", "vitals/+"],
        "$share/NAME/vitals/#": Bridge(Settings(), group="NAME").subscriptions == ["$share/NAME/vitals/#"],
        "vitals/#": ("subscribePattern", "vitals/#") in bridge and ("publishClientReceive", "vitals/#") in bridge,
        "$share/+/vitals/#": ("subscribePattern", "$share/+/vitals/#") in bridge,
        "vitals/<device_id>": DeviceIdentity("dev-1", "p", "").topic == "vitals/dev-1"
        and ("publishClientSend", "vitals/dev-1") in device,
        "vitals/<shard>/<device_id>": DeviceIdentity("dev-1", "p", "", 3).topic == "vitals/3/dev-1"
        and shard_of("dev-1", Settings.mqtt_shards) == 3
        and device == {("publishClientSend", device_topic("dev-1", Settings.mqtt_shards)),
                       ("publishClientSend", "vitals/dev-1")},
        # the literal the 2.0.11 plugin does not substitute (docs/DECISIONS.md D12 explains why no
        # role uses it): named in the docs only as a rejected alternative
        "vitals/%u": all("%u" not in topic for _, topic in bridge | device),
    }


def test_every_topic_filter_in_the_docs_is_the_codes() -> None:
    shapes = _topic_shapes()
    assert all(shapes.values()), shapes
    named = {(doc.name, found) for doc in DOCS for found in TOPIC.findall(doc.read_text())}
    unknown = sorted((doc, found) for doc, found in named if found not in shapes)
    assert unknown == []
    kafka = {found for doc in DOCS for found in re.findall(r"`(vitals\.[a-z]+)`", doc.read_text())}
    assert {Settings.raw_topic, Settings.dlq_topic} <= kafka, kafka  # the rest are payload fields


def _shown_commands() -> set[tuple[str, ...]]:
    """``vitalchain WORD [WORD]`` in code spans and sh blocks of the docs."""
    shown: set[tuple[str, ...]] = set()
    for doc in DOCS:
        text = doc.read_text()
        prose = re.sub(r"^```.*?^```$", "", text, flags=re.S | re.M)
        blocks = [re.sub(r"(^|\s)#.*$", "", block, flags=re.M)  # without shell comments
                  for block in re.findall(r"```sh\n(.*?)```", text, re.S)]
        code = blocks + re.findall(r"`([^`\n]+)`", prose)
        for chunk in code:
            for match in re.finditer(r"(?:^|[\s(`$])(?:\.venv/bin/)?vitalchain ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?",
                                     chunk, re.M):
                shown.add(tuple(w for w in match.groups() if w))
    return shown


def test_every_command_the_docs_show_exists() -> None:
    missing = []
    for words in sorted(_shown_commands()):
        command = main.get_command(click.Context(main), words[0]) if words[0] in COMMANDS else None
        if command is None or (len(words) > 1 and type(command) is click.Group
              and words[1] not in command.commands):
            missing.append(" ".join(words))
    assert missing == []


def test_the_threat_models_access_log_is_the_apis_access_log() -> None:
    rows = [line for line in (ROOT / "docs" / "THREAT_MODEL.md").read_text().splitlines()
            if line.startswith("| Access log")]
    assert len(rows) == 1
    assert "vitals.dlq" not in rows[0] and "api.sqlite" in rows[0], rows[0]
