"""Production mode refuses to start with development defaults.

In dev mode vitalchain makes its own secrets (a fresh salt key under ``<state>/secrets``), anchors
with anvil's account 0 (whose key is public), and talks to Mosquitto in plain text on loopback.
Each is fine on a laptop and a breach in a hospital: a public anchoring key lets anyone spend
the anchoring account and publish checkpoints in its name, a salt key created on the fly and lost
with the state folder makes every reading's salt unreproducible, plain MQTT exposes readings and
device passwords to the network. So ``VITALCHAIN_MODE=production`` checks, before any command
but ``stack`` and ``verify`` runs (the verifier needs no secrets), that each of these was
replaced, and names every problem at once so the operator fixes them in one go.
"""

from __future__ import annotations

from pathlib import Path

from vitalchain.config import DEV_ANCHOR_PRIVATE_KEY, ENV_PREFIX, ConfigError, Settings

# anvil's (and hardhat's) development chain id: a production chain is never this.
DEV_CHAIN_ID = 31337


def _readable_file(setting: str, path: str, what: str) -> str | None:
    """The problem with a ``*_FILE`` setting, or None when it names a readable file."""
    var = f"{ENV_PREFIX}{setting.upper()}"
    if not path:
        return f"{var} is empty: production needs {what}"
    try:
        Path(path).read_bytes()
    except OSError as exc:
        return f"{var}={path} cannot be read ({exc.strerror}): production needs {what}"
    return None


def production_problems(settings: Settings) -> list[str]:
    """Every development default still in use (empty in dev mode: dev allows them all)."""
    if settings.mode != "production":
        return []
    problems: list[str] = []
    key_problem = _readable_file("anchor_private_key_file", settings.anchor_private_key_file,
                                 "a file with the anchoring account's private key (the "
                                 "development key is public)")
    if key_problem:
        problems.append(key_problem)
    else:
        text = Path(settings.anchor_private_key_file).read_text(errors="replace").strip().lower()
        if "0x" + text.removeprefix("0x") == DEV_ANCHOR_PRIVATE_KEY:
            problems.append(f"{ENV_PREFIX}ANCHOR_PRIVATE_KEY_FILE holds anvil's public "
                            "development key")
    salt_problem = _readable_file("salt_key_file", settings.salt_key_file,
                                  "a provisioned salt key file (dev generates one in the state "
                                  "folder; losing it makes salts unreproducible)")
    if salt_problem:
        problems.append(salt_problem)
    tls_problem = _readable_file("mqtt_tls_ca_file", settings.mqtt_tls_ca_file,
                                 "MQTT over TLS (a CA file); plain MQTT exposes readings and "
                                 "device passwords")
    if tls_problem:
        problems.append(tls_problem)
    if settings.eth_chain_id == DEV_CHAIN_ID:
        problems.append(f"{ENV_PREFIX}ETH_CHAIN_ID={DEV_CHAIN_ID} is anvil's development chain")
    return problems


def check_production(settings: Settings) -> None:
    """Raise :class:`ConfigError` naming every development default production mode still has."""
    problems = production_problems(settings)
    if problems:
        raise ConfigError("production mode refuses development defaults:\n  - "
                          + "\n  - ".join(problems))
