"""Credentials of one bridge instance: each instance is its own MQTT user (D7).

Mosquitto uses the username as client id, so two bridges sharing a user would share one client
id and kick each other off the broker. ``stack up`` creates instance 0's user; any other instance
gets its own here, on demand (``vitalchain bridge provision``, or ``bridge run`` in dev mode),
and a running local Mosquitto is reloaded so the new user can connect at once.
"""

from __future__ import annotations

from vitalchain.devices.mqtt_auth import MqttCredentials, bridge_user
from vitalchain.devices.mqtt_reload import reload_mosquitto

from vitalchain.config import Settings


def provision_bridge(settings: Settings, instance: int) -> bool:
    """Make sure bridge ``instance`` has MQTT credentials; True when they were just created.

    Returns only once a running local Mosquitto accepts the new user. The acceptance check
    connects as the user, which is harmless here: a user created just now has no live client
    and no session yet.
    """
    creds = MqttCredentials(settings.state_dir)
    if not creds.ensure_bridge_user(instance):
        return False
    user = bridge_user(instance)
    reload_mosquitto(settings, (user, creds.password(user)))
    return True
