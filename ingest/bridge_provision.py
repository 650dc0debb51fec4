"""Credentials of one bridge instance: each instance is its own MQTT user (D7).

Mosquitto uses the username as client id, so two bridges sharing a user would share one client
id and kick each other off the broker. ``stack up`` creates instance 0's user; any other instance
gets its own here, on demand (``vitalchain bridge provision``, or ``bridge run`` in dev mode),
and a running local Mosquitto learns it through its dynamic-security plugin (no SIGHUP, D12).
"""

from __future__ import annotations

from vitalchain.config import Settings
from vitalchain.devices.mqtt_admin import add_to_broker
from vitalchain.devices.mqtt_auth import MqttCredentials, bridge_user


def provision_bridge(settings: Settings, instance: int) -> bool:
    """Make sure bridge ``instance`` has MQTT credentials; True when they were just created.

    Returns only once a running local Mosquitto has the user. The user is offered to the broker
    even when it existed already (the broker keeps a user it has, so this is harmless to a
    connected bridge): a creation whose broker step failed is completed by the next call.
    """
    creds = MqttCredentials(settings.state_dir)
    created = creds.ensure_bridge_user(instance)
    user = bridge_user(instance)
    add_to_broker(settings, {user: creds.password(user)})
    return created
