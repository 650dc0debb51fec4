"""Production mode refuses development defaults; the repository holds no secrets."""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from vitalchain.app.cli import main
from vitalchain.app.production import check_production, production_problems
from vitalchain.config import DEV_ANCHOR_PRIVATE_KEY, ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def production(tmp_path: Path) -> Settings:
    """Production settings with every secret provisioned: the baseline each test breaks once."""
    key = tmp_path / "anchor.key"
    key.write_text(secrets.token_hex(32))
    salt = tmp_path / "salt.key"
    salt.write_text(secrets.token_hex(32))
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    return load_settings(environ={}, mode="production", state_dir=tmp_path / "state",
                         anchor_private_key_file=str(key), salt_key_file=str(salt),
                         mqtt_tls_ca_file=str(ca), eth_chain_id=1)


def test_dev_mode_allows_every_default(tmp_path: Path) -> None:
    settings = load_settings(environ={}, state_dir=tmp_path)
    assert production_problems(settings) == []
    check_production(settings)


def test_provisioned_production_starts(production: Settings) -> None:
    assert production_problems(production) == []
    check_production(production)


@pytest.mark.parametrize(("change", "expected"), [
    ({"anchor_private_key_file": ""},
     "VITALCHAIN_ANCHOR_PRIVATE_KEY_FILE is empty: production needs a file with the anchoring"),
    ({"anchor_private_key_file": "/nonexistent/anchor.key"},
     "VITALCHAIN_ANCHOR_PRIVATE_KEY_FILE=/nonexistent/anchor.key cannot be read"),
    ({"salt_key_file": ""}, "VITALCHAIN_SALT_KEY_FILE is empty: production needs a provisioned"),
    ({"salt_key_file": "/nonexistent/salt.key"},
     "VITALCHAIN_SALT_KEY_FILE=/nonexistent/salt.key cannot be read"),
    ({"mqtt_tls_ca_file": ""}, "VITALCHAIN_MQTT_TLS_CA_FILE is empty: production needs MQTT over TLS"),
    ({"mqtt_tls_ca_file": "/nonexistent/ca.pem"},
     "VITALCHAIN_MQTT_TLS_CA_FILE=/nonexistent/ca.pem cannot be read"),
    ({"eth_chain_id": 31337}, "VITALCHAIN_ETH_CHAIN_ID=31337 is anvil's development chain"),
])
def test_each_development_default_is_refused(production: Settings, change: dict[str, object],
                                             expected: str) -> None:
    broken = production.with_overrides(**change)
    assert len(production_problems(broken)) == 1
    with pytest.raises(ConfigError) as info:
        check_production(broken)
    assert expected in str(info.value)
    assert str(info.value).startswith("production mode refuses development defaults")


@pytest.mark.parametrize("written", [DEV_ANCHOR_PRIVATE_KEY, DEV_ANCHOR_PRIVATE_KEY[2:].upper()])
def test_the_public_anvil_key_in_a_file_is_refused(production: Settings, tmp_path: Path,
                                                   written: str) -> None:
    key = tmp_path / "dev.key"
    key.write_text(written + "\n")
    with pytest.raises(ConfigError, match="holds anvil's public development key"):
        check_production(production.with_overrides(anchor_private_key_file=str(key)))


def test_all_problems_named_at_once(tmp_path: Path) -> None:
    bare = load_settings(environ={}, mode="production", state_dir=tmp_path)
    message = "\n".join(production_problems(bare))
    for var in ("ANCHOR_PRIVATE_KEY_FILE", "SALT_KEY_FILE", "MQTT_TLS_CA_FILE", "ETH_CHAIN_ID"):
        assert f"VITALCHAIN_{var}" in message


def test_cli_refuses_in_production_except_stack_and_verify(tmp_path: Path) -> None:
    env = {"VITALCHAIN_MODE": "production", "VITALCHAIN_STATE_DIR": str(tmp_path)}
    runner = CliRunner()
    for command in ("bridge", "stream", "anchor", "devices", "demo", "proof"):
        result = runner.invoke(main, [command, "--help"], env=env)
        assert result.exit_code == 2, (command, result.output)
        assert "production mode refuses development defaults" in result.output, command
        assert "VITALCHAIN_ANCHOR_PRIVATE_KEY_FILE" in result.output
    for command in ("stack", "verify"):
        result = runner.invoke(main, [command, "--help"], env=env)
        assert result.exit_code == 0, (command, result.output)
    dev = runner.invoke(main, ["bridge", "--help"], env={"VITALCHAIN_MODE": "dev",
                                                         "VITALCHAIN_STATE_DIR": str(tmp_path)})
    assert dev.exit_code == 0, dev.output


def test_flood_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VITALCHAIN_FLOOD_RATE_PER_SECOND"):
        load_settings(environ={"VITALCHAIN_FLOOD_RATE_PER_SECOND": "0"}, state_dir=tmp_path)
    with pytest.raises(ConfigError, match="VITALCHAIN_FLOOD_BURST"):
        load_settings(environ={"VITALCHAIN_FLOOD_BURST": "0"}, state_dir=tmp_path)


# --- no secrets in the repository -----------------------------------------------------------
# A 64-hex-digit value (a private key, salt key or token) written just after a word naming a
# secret; key material in PEM form; well-known token shapes; files that hold secrets by name.
_SECRET_VALUE = re.compile(
    r"(?i)(private|secret|token|passw\w*|key)\W{0,40}?(?:0x)?([0-9a-f]{64})(?![0-9a-f])")
_SECRET_SHAPES = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|sk-[A-Za-z0-9]{32,}"
    r"|\$7\$\d+\$[A-Za-z0-9+/]{12,}=*\$")  # a Mosquitto password hash
_SECRET_NAMES = re.compile(r"(^|/)(\.state|secrets)/|\.(key|pem|p12)$|(^|/)(passwd|mqtt-users\.json)$")
# Public on purpose: anvil's account 0 (DEV_ANCHOR_PRIVATE_KEY, refused in production) and the
# salt key of the worked example in docs/PROOFS.md (bytes 0..31).
_ALLOWED = {DEV_ANCHOR_PRIVATE_KEY[2:], bytes(range(32)).hex()}


def _repository_files() -> list[str]:
    """What the repository holds or is about to hold: tracked plus untracked, not ignored."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=REPO, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name and (REPO / name).is_file()]


def test_the_scanner_finds_what_it_looks_for() -> None:
    assert _SECRET_VALUE.search(f'SALT_KEY = "{secrets.token_hex(32)}"')
    assert _SECRET_VALUE.search(f"private key: 0x{secrets.token_hex(32)}")
    assert _SECRET_SHAPES.search("-----BEGIN EC PRIVATE KEY-----")
    assert _SECRET_NAMES.search("deploy/secrets/anchor.key")
    assert _SECRET_SHAPES.search("dev-1:$7$101$c2FsdHNhbHRzYWx0$aGFzaGhhc2g=")
    assert not _SECRET_VALUE.search(f"root = {secrets.token_hex(32)}")  # hashes are fine


def test_no_secret_in_the_repository() -> None:
    files = _repository_files()
    assert len(files) > 50, "git ls-files listed too little: is this the repository?"
    found: list[str] = []
    for name in files:
        if _SECRET_NAMES.search(name):
            found.append(f"{name}: a secret's file name")
            continue
        if name == "tests/test_production_mode.py":
            continue  # this file spells out the patterns it looks for
        data = (REPO / name).read_bytes()
        if b"\0" in data[:4096]:
            continue  # binary
        for lineno, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            hits = [m.group(2).lower() for m in _SECRET_VALUE.finditer(line)]
            if any(h not in _ALLOWED for h in hits) or _SECRET_SHAPES.search(line):
                found.append(f"{name}:{lineno}: {line.strip()[:120]}")
    assert found == [], "possible secrets in the repository:\n" + "\n".join(found)
