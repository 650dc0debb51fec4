"""Helper for tests that provision a further bridge instance (no tests here)."""

from __future__ import annotations

from vitalchain.devices.mqtt_auth import MqttCredentials, bridge_user
from vitalchain.devices.mqtt_check import connack
from vitalchain.ingest.bridge_provision import provision_bridge

from vitalchain.config import Settings


def bridge_instance_user(settings: Settings, instance: int = 7) -> None:
    """Provision bridge ``instance`` on a running broker; it must be accepted at once."""
    assert provision_bridge(settings, instance) is True
    user = bridge_user(instance)
    assert connack(settings, user, MqttCredentials(settings.state_dir).password(user)) == "accepted"
