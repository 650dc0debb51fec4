"""Provisioning: which devices exist, which patient each one is on, and their MQTT credentials.

The registry (``<state_dir>/devices/registry.json``) maps device id to patient id and holds no
secret; passwords live in the stack's credential store (``MqttCredentials``, under
``<state_dir>/secrets``). A running local Mosquitto learns new devices through its dynamic-security
plugin (``mqtt_admin.add_to_broker``, no SIGHUP, D12), which answers only once they can connect: a
caller that starts publishing right after provisioning is never refused. A device enters the
registry only after the broker has it, so a provisioning that failed half-way is completed by the
next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vitalchain.config import Settings
from vitalchain.core.payload.shards import shard_of
from vitalchain.devices import keys as device_keys
from vitalchain.devices import mqtt_admin
from vitalchain.devices.mqtt_auth import (
    DEVICE_ID_PATTERN,
    RESERVED_PREFIX,
    MqttCredentials,
    is_reserved,
)
from vitalchain.devices.mqtt_check import connack  # noqa: F401 - part of this module's API
from vitalchain.errors import InvalidInput


class ProvisioningError(InvalidInput):
    """Devices could not be provisioned or are not provisioned; the message says which."""


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    patient_id: str
    password: str
    # The device's shard (vitalchain.core.payload.shards), set by provisioning; None means the
    # former unsharded topic, which the broker still accepts during a migration.
    shard: int | None = None
    # The device's own Ed25519 key (devices/keys.py); None: it signs nothing (a legacy device).
    signing: device_keys.SigningKey | None = field(default=None, repr=False, compare=False)

    @property
    def username(self) -> str:
        return self.device_id

    @property
    def topic(self) -> str:
        """Where the device publishes: ``vitals/<shard>/<device_id>`` (docs/DEVICES.md)."""
        if self.shard is None:
            return f"vitals/{self.device_id}"
        return f"vitals/{self.shard}/{self.device_id}"


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


class UnknownPatient(InvalidInput):
    """A patient id the registry does not know (a typo, or a device id given for a patient)."""


def check_known_patient(registry: dict[str, str], patient: str) -> None:
    """A grant is consent of a patient the registry knows: refuse a typo or a device id, which
    would otherwise be stored as a grant that never matches anybody (the CLI and the API both)."""
    if patient in registry.values():
        return
    if patient in registry:
        raise UnknownPatient(f"{patient!r} is a device, not a patient: its patient is "
                             f"{registry[patient]!r} (`vitalchain patients list`)")
    raise UnknownPatient(f"unknown patient {patient!r}: no provisioned device is on it "
                         f"(`vitalchain patients list` shows the {len(set(registry.values()))} known patients)")


def _save_registry(settings: Settings, registry: dict[str, str]) -> None:
    path = registry_path(settings)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(registry, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def provision_devices(settings: Settings, n: int, prefix: str = "wearable",
                      apply: bool = True) -> list[DeviceIdentity]:
    """Make sure devices ``<prefix>-00001 .. <prefix>-<n>`` exist; return their identities.

    Existing devices keep their password and patient. Devices not yet registered are created in
    a running local Mosquitto (``apply``) before they are registered, so this returns once they
    can connect; ``apply=False`` only records them (a Mosquitto started later reads them).
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
        creds = MqttCredentials(settings.state_dir)
        stored = creds.users()
        # Not registered yet, or registered without credentials (a store lost or reset).
        pending = [d for d in ids if d not in registry or d not in stored]
        if pending:
            if any(d not in stored for d in pending):
                stored = creds.add_users({d: None for d in pending})
            if apply:
                _add_to_broker(settings, {d: stored[d] for d in pending})
            for device_id in pending:
                registry[device_id] = patient_for(device_id)
            _save_registry(settings, registry)
        # Every device gets a signing key, logged in the window log (an older state folder's
        # devices get theirs on the next provisioning).
        device_keys.ensure_keys(settings, ids)
    return [DeviceIdentity(d, registry[d], stored[d], shard_of(d, settings.mqtt_shards),
                            device_keys.signing_key(settings, d))
            for d in ids]


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
        result.append(DeviceIdentity(device_id, registry[device_id], password,
                                     shard_of(device_id, settings.mqtt_shards),
                                     device_keys.signing_key(settings, device_id)))
    return result


def _add_to_broker(settings: Settings, users: dict[str, str]) -> bool:
    """Create these device users in the running local Mosquitto (False: it is not running)."""
    try:
        return mqtt_admin.add_to_broker(settings, users)
    except mqtt_admin.AdminFailed as exc:
        raise ProvisioningError(f"Mosquitto did not take the new devices: {exc}") from None


def _registered(settings: Settings, device_id: str) -> None:
    if device_id not in load_registry(settings):
        raise ProvisioningError(
            f"device {device_id!r} is not provisioned; run `vitalchain devices provision`")


def rotate_key(settings: Settings, device_id: str) -> dict[str, object]:
    """A new signing key for a provisioned device (the old one revoked); the new key's entry."""
    with _locked(settings):
        _registered(settings, device_id)
        return device_keys.rotate(settings, device_id)


def revoke_key(settings: Settings, device_id: str) -> dict[str, object]:
    """Revoke a provisioned device's key (its messages are refused until rotated)."""
    with _locked(settings):
        _registered(settings, device_id)
        return device_keys.revoke(settings, device_id)
