"""Provisioning: which devices exist, which patient each one is on, and their MQTT credentials.

The registry (``<state_dir>/devices/registry.json``) maps device id to patient id and holds no
secret; passwords live in the stack's credential store (``MqttCredentials``, under
``<state_dir>/secrets``). Mosquitto reads its password file and ACL only at start or on SIGHUP, so
provisioning ends with ``reload_mosquitto``, which returns only once a newly added device can really
connect: a caller that starts publishing right after provisioning is never refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vitalchain.devices import mqtt_reload
from vitalchain.devices.mqtt_auth import (
    DEVICE_ID_PATTERN,
    RESERVED_PREFIX,
    MqttCredentials,
    is_reserved,
)
from vitalchain.devices.mqtt_reload import connack  # noqa: F401 - part of this module's API

from vitalchain.config import Settings
from vitalchain.errors import InvalidInput


class ProvisioningError(InvalidInput):
    """Devices could not be provisioned or are not provisioned; the message says which."""


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    patient_id: str
    password: str

    @property
    def username(self) -> str:
        return self.device_id

    @property
    def topic(self) -> str:
        return f"vitals/{self.device_id}"


def devices_dir(settings: Settings) -> Path:
    return settings.state_dir / "devices"


def registry_path(settings: Settings) -> Path:
    return devices_dir(settings) / "registry.json"


def patient_for(device_id: str) -> str:
    """The patient a device is assigned to: a stable function of its id, so re-provisioning,
    another machine, or a test all agree without sharing state."""
    return "patient-" + hashlib.blake2b(device_id.encode(), digest_size=5).hexdigest()


def device_ids_for(prefix: str, n: int) -> list[str]:
    width = max(5, len(str(n)))
    return [f"{prefix}-{i:0{width}d}" for i in range(1, n + 1)]


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """Serialise provisioning between processes sharing one state folder."""
    folder = devices_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "registry.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_registry(settings: Settings) -> dict[str, str]:
    path = registry_path(settings)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ProvisioningError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ProvisioningError(f"{path} must map device ids to patient ids")
    return dict(data)


def patients(settings: Settings) -> dict[str, list[str]]:
    """Each patient the registry knows, with the ids of the devices on it (sorted): the patients
    grants and the API refer to."""
    result: dict[str, list[str]] = {}
    for device_id, patient_id in sorted(load_registry(settings).items()):
        result.setdefault(patient_id, []).append(device_id)
    return dict(sorted(result.items()))


def _save_registry(settings: Settings, registry: dict[str, str]) -> None:
    path = registry_path(settings)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(registry, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def provision_devices(settings: Settings, n: int, prefix: str = "wearable",
                      reload: bool = True) -> list[DeviceIdentity]:
    """Make sure devices ``<prefix>-00001 .. <prefix>-<n>`` exist; return their identities.

    Existing devices keep their password and patient. When any device is new and Mosquitto runs,
    it is reloaded and this returns once the new credentials work.
    """
    if n < 1:
        raise ProvisioningError("number of devices must be at least 1")
    ids = device_ids_for(prefix, n)
    if not DEVICE_ID_PATTERN.match(ids[-1]):
        raise ProvisioningError(
            f"prefix {prefix!r} gives invalid device ids like {ids[-1]!r}: use letters, digits, "
            "'_', '.', '-', starting with a letter or digit, at most 64 characters in all")
    if is_reserved(ids[0]):
        raise ProvisioningError(f"prefix {prefix!r} collides with vitalchain's service users "
                                f"(names starting with {RESERVED_PREFIX!r} are reserved)")
    with _locked(settings):
        registry = load_registry(settings)
        new = [d for d in ids if d not in registry]
        creds = MqttCredentials(settings.state_dir)
        passwords: dict[str, str] = {}
        for device_id in ids:
            with contextlib.suppress(KeyError):
                passwords[device_id] = creds.password(device_id)
        missing = [d for d in ids if d not in passwords]
        if missing:
            # Rewriting Mosquitto's files is what makes a device able to connect: do it only
            # when something changed.
            passwords = creds.add_users({d: None for d in missing})
            new = sorted(set(new) | set(missing))
        for device_id in new:
            registry[device_id] = patient_for(device_id)
        if new:
            _save_registry(settings, registry)
    identities = [DeviceIdentity(d, registry[d], passwords[d]) for d in ids]
    if new and reload:
        probe = next(i for i in identities if i.device_id == new[-1])
        reload_mosquitto(settings, probe)
    return identities


def identities(settings: Settings, device_ids: list[str]) -> list[DeviceIdentity]:
    """The identities of already provisioned devices (error naming the first unknown one)."""
    registry = load_registry(settings)
    creds = MqttCredentials(settings.state_dir)
    result = []
    for device_id in device_ids:
        if device_id not in registry:
            raise ProvisioningError(
                f"device {device_id!r} is not provisioned; run `vitalchain devices provision`")
        try:
            password = creds.password(device_id)
        except KeyError as exc:
            raise ProvisioningError(f"device {device_id!r} has no MQTT credentials") from exc
        result.append(DeviceIdentity(device_id, registry[device_id], password))
    return result


def reload_mosquitto(settings: Settings, probe: DeviceIdentity | None = None,
                     timeout: float = 15.0) -> bool:
    """SIGHUP Mosquitto so it rereads passwords and ACL; with ``probe``, wait until that (new)
    device is accepted. Returns False when Mosquitto is not running (it reads the files when it
    starts)."""
    try:
        return mqtt_reload.reload_mosquitto(
            settings, None if probe is None else (probe.username, probe.password), timeout)
    except mqtt_reload.ReloadFailed as exc:
        raise ProvisioningError(str(exc)) from None
