"""Users added and removed while Mosquitto runs, through its dynamic-security plugin (D12).

What the plugin adds to the access rules checked in tests/test_access_mqtt.py: nobody but the
admin user can change users (a device publishing a createClient command is refused), adding a
user touches no connected client, removing one disconnects it for good, users survive a broker
restart (rendered from the credential store at start), and no password reaches Mosquitto's log.
"""

from __future__ import annotations

import json
import uuid

import pytest

from tests.bridge_support import provision_device, unique_device
from tests.common_support import wait_until
from tests.test_access_mqtt import Client
from vitalchain.config import Settings
from vitalchain.devices.mqtt_admin import add_to_broker, remove_from_broker
from vitalchain.devices.mqtt_auth import BRIDGE_USER, PROBE_USER, MqttCredentials
from vitalchain.devices.mqtt_check import connack
from vitalchain.devices.mqtt_dynsec import CONTROL_TOPIC, RESPONSE_TOPIC
from vitalchain.devices.registry import provision_devices
from vitalchain.ingest.bridge_provision import provision_bridge

pytestmark = pytest.mark.e2e


def _password(settings: Settings, user: str) -> str:
    return MqttCredentials(settings.state_dir).password(user)


def test_only_the_admin_can_change_users(isolated: Settings) -> None:
    dev = unique_device("dev")
    dev_pw = provision_device(isolated, dev)
    forged = f"forged-{uuid.uuid4().hex[:8]}"
    command = json.dumps({"commands": [
        {"command": "createClient", "username": forged, "password": "pw"},
        {"command": "addClientRole", "username": dev, "rolename": "vitalchain-bridge"}]})
    for user, password in ((dev, dev_pw), (PROBE_USER, _password(isolated, PROBE_USER)),
                           (BRIDGE_USER, _password(isolated, BRIDGE_USER))):
        client = Client(isolated, user, password)
        try:
            assert client.accepted
            client.subscribe(RESPONSE_TOPIC)
            ack = client.publish(CONTROL_TOPIC, command.encode())
            assert ack.is_failure, f"{user} may send admin commands ({ack})"
            assert client.received == []
        finally:
            client.close()
    assert connack(isolated, forged, "pw") != "accepted"
    # The device did not become a reader either: once the bridge has its message, a reader
    # would have it too (delivery to all subscribers happens in the same broker step).
    device = Client(isolated, dev, dev_pw)
    bridge = Client(isolated, BRIDGE_USER, _password(isolated, BRIDGE_USER))
    try:
        device.subscribe(f"vitals/{dev}")
        assert not bridge.subscribe(f"vitals/{dev}")[0].is_failure
        assert not device.publish(f"vitals/{dev}", b'{"own":1}').is_failure
        wait_until(lambda: bridge.received, 10, "the device's message at the bridge")
        assert device.received == []
    finally:
        device.close()
        bridge.close()


def test_adding_users_leaves_connected_clients_alone(isolated: Settings) -> None:
    """Provisioning devices and bridges, even one that exists and is connected, disconnects
    nobody: the plugin keeps a user it has (a SIGHUP-free provisioning at any moment)."""
    bridge = Client(isolated, BRIDGE_USER, _password(isolated, BRIDGE_USER), session=True)
    try:
        assert not bridge.subscribe("vitals/+")[0].is_failure
        provision_devices(isolated, 3, prefix=unique_device("calm"))
        assert provision_bridge(isolated, 0) is False  # exists: offered again, kept as it is
        assert add_to_broker(isolated, {BRIDGE_USER: _password(isolated, BRIDGE_USER)})
        dev = unique_device("dev")
        sender = Client(isolated, dev, provision_device(isolated, dev))
        try:
            assert not sender.publish(f"vitals/{dev}", b'{"n":1}').is_failure
        finally:
            sender.close()
        wait_until(lambda: bridge.received, 10, "the reading at the connected bridge")
        assert bridge.disconnects == []
    finally:
        bridge.close()


def test_a_removed_device_is_disconnected_and_refused(isolated: Settings) -> None:
    dev = unique_device("gone")
    password = provision_device(isolated, dev)
    client = Client(isolated, dev, password)
    try:
        assert client.accepted
        assert remove_from_broker(isolated, [dev])
        wait_until(lambda: client.disconnects, 10, "the removed device's disconnection")
    finally:
        client.close()
    assert connack(isolated, dev, password) != "accepted"
    assert add_to_broker(isolated, {dev: password})  # and back, its role with it
    again = Client(isolated, dev, password)
    try:
        assert not again.publish(f"vitals/{dev}", b'{"n":2}').is_failure
    finally:
        again.close()


def test_users_survive_a_restart_and_devices_provisioned_meanwhile_work(fresh_stack) -> None:
    stack = fresh_stack(("mosquitto",))
    settings = stack.settings
    [before] = provision_devices(settings, 1, prefix=unique_device("before"))
    stack.stop("mosquitto")
    [during] = provision_devices(settings, 1, prefix=unique_device("during"))  # store only
    stack.start("mosquitto")
    stack.wait_healthy("mosquitto")
    for device in (before, during):
        assert connack(settings, device.username, device.password) == "accepted", device
    assert connack(settings, during.username, before.password) != "accepted"
    # No password, the admin's included, in what Mosquitto logged meanwhile.
    log = stack.log_path("mosquitto").read_text(errors="replace")
    creds = MqttCredentials(settings.state_dir)
    for password in (*creds.users().values(), creds.admin_password()):
        assert password not in log


def test_a_provisioning_interrupted_before_the_broker_is_completed_by_the_next(
        isolated: Settings) -> None:
    """Credentials stored, broker not told (a crash in between): the device is not registered
    yet, so the next provisioning of it hands it to the broker."""
    prefix = unique_device("half")
    device_id = f"{prefix}-00001"
    password = MqttCredentials(isolated.state_dir).add_users({device_id: None})[device_id]
    assert connack(isolated, device_id, password) != "accepted"
    [identity] = provision_devices(isolated, 1, prefix=prefix)
    assert (identity.device_id, identity.password) == (device_id, password)
    assert connack(isolated, device_id, password) == "accepted"
