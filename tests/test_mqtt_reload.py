"""A bridge's persistent session across provisioning, which used to reload Mosquitto (SIGHUP).

Measured on Mosquitto 2.0.11 with the former password file (eclipse-mosquitto/mosquitto#2934,
open): after a broker *restart*, a SIGHUP sent before the bridge had reconnected made the broker
acknowledge to devices, and then drop, every message for the bridge's restored session (0 of 5
arrived). Provisioning now adds users through the dynamic-security plugin's control topic and
sends no SIGHUP (docs/DECISIONS.md D12), so the exact sequence (restart, provision, publish, bridge
back) loses nothing, whether or not the bridge visited in between.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest

from tests.bridge_support import bridge_instance_user, provision_device, unique_device
from tests.common_support import wait_until
from tests.test_access_mqtt import Client
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import Settings
from vitalchain.devices.mqtt_auth import BRIDGE_USER, MqttCredentials
from vitalchain.devices.registry import provision_devices

pytestmark = pytest.mark.e2e

SENT = [f'{{"n":{i}}}'.encode() for i in range(5)]


def _bridge(settings: Settings) -> Client:
    password = MqttCredentials(settings.state_dir).password(BRIDGE_USER)
    return Client(settings, BRIDGE_USER, password, session=True)


def _queued_after(fresh_stack: Callable[..., Stack], bridge_back_before_provisioning: bool,
                  provision: Callable[[Settings], None]) -> list[bytes]:
    """Bridge session subscribes and leaves; broker restarts; (bridge visits;) something is
    provisioned; a device publishes; what does the bridge get when back?"""
    stack = fresh_stack(("mosquitto",))
    settings = stack.settings
    dev = unique_device("dev")
    dev_pw = provision_device(settings, dev)
    # A fresh client id on every connect: the broker finds the session by username alone (D7).
    bridge = _bridge(settings)
    assert not bridge.subscribe("vitals/+")[0].is_failure
    bridge.close()
    stack.restart("mosquitto")
    if bridge_back_before_provisioning:
        visit = _bridge(settings)
        assert visit.accepted
        visit.close()
    provision(settings)
    device = Client(settings, dev, dev_pw)
    for payload in SENT:
        assert not device.publish(f"vitals/{dev}", payload).is_failure  # PUBACKed to the device
    device.close()
    back = _bridge(settings)
    try:
        with contextlib.suppress(AssertionError):  # the caller's assertion names what arrived
            wait_until(lambda: len(back.received) >= len(SENT), 5, "the queued messages")
        return [p for _, p in back.received]
    finally:
        back.close()


def _devices(settings: Settings) -> None:
    """What `vitalchain devices provision` does: returns once the new devices can connect."""
    provision_devices(settings, 3, prefix=unique_device("new"))


def test_provisioning_after_the_bridge_came_back_keeps_its_queue(fresh_stack) -> None:
    assert _queued_after(fresh_stack, True, _devices) == SENT


def test_provisioning_after_a_restart_keeps_the_offline_bridges_queue(fresh_stack) -> None:
    """The sequence of Mosquitto #2934 (a strict xfail while provisioning sent SIGHUP)."""
    assert _queued_after(fresh_stack, False, _devices) == SENT


def test_provisioning_a_bridge_instance_after_a_restart_keeps_the_queue(fresh_stack) -> None:
    assert _queued_after(fresh_stack, False, bridge_instance_user) == SENT
