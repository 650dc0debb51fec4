"""MQTT access control on the real Mosquitto, beyond what other tests already check.

Already covered elsewhere (not repeated here): anonymous and wrong-password connects refused
(``tests/test_stack.py``), a device's wrong password refused and its publish to another device's
topic rejected before any subscriber sees it (``tests/test_devices_mqtt.py``). Added here: devices
and the probe cannot read anything, the probe cannot write, a device's password does not open
another device's account, nothing a device writes outside ``vitals/<its id>`` reaches the real
bridge, and a device cannot take over another client's id.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.bridge_support import (
    Records,
    make_reading,
    provision_device,
    running_bridge,
    unique_device,
)
from tests.common_support import wait_until
from vitalchain.config import Settings
from vitalchain.devices.mqtt_auth import BRIDGE_USER, PROBE_USER, MqttCredentials

pytestmark = pytest.mark.e2e

SNOOP_FILTERS = ("#", "vitals/#", "vitals/+", "$SYS/#", "$share/snoop/vitals/#", "$CONTROL/#")


class Client:
    """A MQTT 5 client recording CONNACK, SUBACK and PUBACK reason codes and what it receives."""

    def __init__(self, settings: Settings, user: str, password: str,
                 client_id: str | None = None, session: bool = False) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"{user}-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, password)
        self.connack: list[Any] = []
        self.subacks: dict[int, list[Any]] = {}
        self.pubacks: dict[int, Any] = {}
        self.received: list[tuple[str, bytes]] = []
        self.disconnects: list[Any] = []
        self.lock = threading.Lock()
        self.client.on_connect = lambda c, u, f, reason, p: self.connack.append(reason)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.__setitem__(mid, codes)
        self.client.on_publish = lambda c, u, mid, reason, p: self.pubacks.__setitem__(mid, reason)
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, m.payload))
        self.client.on_disconnect = lambda c, u, f, reason, p: self.disconnects.append(reason)
        props = None
        if session:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
        self.client.connect(settings.host, settings.mqtt_port, keepalive=10,
                            clean_start=not session, properties=props)
        self.client.loop_start()
        wait_until(lambda: self.connack, 10, f"CONNACK for {user}")

    @property
    def accepted(self) -> bool:
        return not self.connack[0].is_failure

    def subscribe(self, topic: str) -> list[Any]:
        _, mid = self.client.subscribe(topic, qos=1)
        return wait_until(lambda: self.subacks.get(mid), 10, f"SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes) -> Any:
        info = self.client.publish(topic, payload, qos=1)
        return wait_until(lambda: self.pubacks.get(info.mid), 10, f"PUBACK for {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _creds(settings: Settings, user: str) -> str:
    return MqttCredentials(settings.state_dir).password(user)


def test_devices_and_probe_cannot_read_and_probe_cannot_write(isolated: Settings) -> None:
    snoop, victim = unique_device("snoop"), unique_device("victim")
    snoop_pw, victim_pw = provision_device(isolated, snoop), provision_device(isolated, victim)
    bridge = Client(isolated, BRIDGE_USER, _creds(isolated, BRIDGE_USER))
    readers = {"device": Client(isolated, snoop, snoop_pw),
               "probe": Client(isolated, PROBE_USER, _creds(isolated, PROBE_USER))}
    victim_client = Client(isolated, victim, victim_pw)
    try:
        assert all(c.accepted for c in (bridge, victim_client, *readers.values()))
        assert not bridge.subscribe(f"vitals/{victim}")[0].is_failure  # the bridge may read
        for who, reader in readers.items():
            for topic in (*SNOOP_FILTERS, f"vitals/{victim}", f"vitals/{snoop}"):
                codes = reader.subscribe(topic)
                # Mosquitto 2.0 grants the SUBACK and filters at delivery; either way is a
                # refusal as long as nothing is delivered (checked below).
                assert len(codes) == 1, (who, topic, codes)
        # The probe may not write: its QoS 1 publish is refused (PUBACK 0x87) and never delivered.
        probe_ack = readers["probe"].publish(f"vitals/{victim}", b'{"forged":1}')
        assert probe_ack.is_failure, f"probe publish acknowledged as {probe_ack}"
        assert readers["device"].publish(f"vitals/{victim}", b'{"forged":2}').is_failure

        victim_ack = victim_client.publish(f"vitals/{victim}", b'{"real":1}')
        assert not victim_ack.is_failure
        wait_until(lambda: (f"vitals/{victim}", b'{"real":1}') in bridge.received, 10,
                   "the victim's message at the bridge user")
        # The real message has been routed; had the snoopers been allowed to read, they would
        # have it by now (delivery to all subscribers happens in the same broker step).
        victim_client.publish(f"vitals/{victim}", b'{"real":2}')
        wait_until(lambda: len(bridge.received) == 2, 10, "the second message at the bridge user")
        for who, reader in readers.items():
            assert reader.received == [], f"{who} read {reader.received[:3]}"
        assert [p for _, p in bridge.received] == [b'{"real":1}', b'{"real":2}']
    finally:
        for client in (bridge, victim_client, *readers.values()):
            client.close()


def test_a_password_opens_only_its_own_account(isolated: Settings) -> None:
    mallory, victim = unique_device("mallory"), unique_device("victim")
    mallory_pw, victim_pw = provision_device(isolated, mallory), provision_device(isolated, victim)
    attempts = {(victim, mallory_pw): False, (BRIDGE_USER, mallory_pw): False,
                (PROBE_USER, mallory_pw): False, (PROBE_USER, "wrong"): False,
                (mallory.upper(), mallory_pw): False, (f"{mallory} ", mallory_pw): False,
                (victim, victim_pw): True}
    for (user, password), allowed in attempts.items():
        client = Client(isolated, user, password)
        try:
            assert client.accepted is allowed, (user, client.connack[0])
        finally:
            client.close()


def test_nothing_outside_the_own_topic_reaches_the_bridge(isolated: Settings) -> None:
    mallory, victim = unique_device("mallory"), unique_device("victim")
    mallory_pw = provision_device(isolated, mallory)
    provision_device(isolated, victim)
    raw, dlq = Records(isolated, isolated.raw_topic), Records(isolated, isolated.dlq_topic)
    client = Client(isolated, mallory, mallory_pw)
    forged = make_reading(victim, 1)
    body = json.dumps(forged).encode()
    elsewhere = [f"vitals/{victim}", f"vitals/{mallory}/x", f"vitals/{mallory}x", "vitals",
                 "vitals/", f"VITALS/{mallory}", "$share/g/vitals/x", "other/topic"]
    try:
        with running_bridge(isolated) as bridge:
            for topic in elsewhere:
                ack = client.publish(topic, body)
                assert ack.is_failure, f"{topic}: {ack}"
            own = json.dumps(make_reading(mallory, 1)).encode()
            assert not client.publish(f"vitals/{mallory}", own).is_failure
            records = raw.wait_for(1, 20, "mallory's own reading")
            wait_until(lambda: bridge.counters.acked >= 1, 10, "the bridge's ack")
            assert [(k, v["device_id"]) for k, v in records] == [(mallory.encode(), mallory)]
            assert bridge.counters.received == 1
            assert dlq.poll() == []
    finally:
        client.close()
        raw.close()
        dlq.close()


def test_a_device_cannot_take_over_another_clients_id(isolated: Settings) -> None:
    """Mosquitto disconnects an existing client when another connects with the same client id.
    Without ``use_username_as_clientid`` (or a plugin) any device can kick any other device, or
    the bridge, off the broker by reusing its id: a denial of service across the ACL. With it
    (docs/DECISIONS.md D7) the intruder's id is replaced by its own username."""
    victim, mallory = unique_device("victim"), unique_device("mallory")
    victim_pw, mallory_pw = provision_device(isolated, victim), provision_device(isolated, mallory)
    holder = Client(isolated, victim, victim_pw, client_id=victim, session=True)
    try:
        intruder = Client(isolated, mallory, mallory_pw, client_id=victim)
        try:
            kicked = wait_until(lambda: holder.disconnects or None, 2, "nothing") \
                if intruder.accepted else None
        except AssertionError:
            kicked = None
        finally:
            intruder.close()
        assert not kicked, (f"a device took over another device's client id (victim "
                            f"disconnected: {kicked[0] if kicked else None}); needs "
                            f"use_username_as_clientid or a client-id ACL")
        # The victim's own connection still works end to end.
        assert not holder.publish(f"vitals/{victim}", b'{"still":1}').is_failure
    finally:
        holder.close()


def test_a_device_cannot_steal_the_bridges_queued_readings(isolated: Settings) -> None:
    """The worse form of the takeover: the bridge's persistent session holds readings queued
    while it is away. A device connecting with the bridge's client id must neither receive them
    (read ACL) nor make them disappear: the bridge, back, must still get every one."""
    dev, mallory = unique_device("dev"), unique_device("mallory")
    dev_pw, mallory_pw = provision_device(isolated, dev), provision_device(isolated, mallory)
    session_id = f"{BRIDGE_USER}-{uuid.uuid4().hex[:6]}"
    bridge = Client(isolated, BRIDGE_USER, _creds(isolated, BRIDGE_USER), client_id=session_id,
                    session=True)
    assert not bridge.subscribe(f"vitals/{dev}")[0].is_failure
    bridge.close()
    device = Client(isolated, dev, dev_pw)
    sent = [f'{{"n":{i}}}'.encode() for i in range(5)]
    for payload in sent:
        assert not device.publish(f"vitals/{dev}", payload).is_failure
    device.close()
    thief = Client(isolated, mallory, mallory_pw, client_id=session_id, session=True)
    try:
        stolen_window = threading.Event()
        stolen_window.wait(1.0)  # give the broker time to deliver the queue, if it would
        stolen = list(thief.received)
    finally:
        thief.close()
    back = Client(isolated, BRIDGE_USER, _creds(isolated, BRIDGE_USER), client_id=session_id,
                  session=True)
    try:
        assert stolen == [], f"a device read the bridge's queued readings: {stolen[:3]}"
        try:
            wait_until(lambda: len(back.received) >= len(sent), 5, "the queued readings")
        except AssertionError as exc:
            raise AssertionError(f"a device reusing the bridge's client id destroyed its queued "
                                 f"readings (bridge got {len(back.received)} of {len(sent)})") \
                from exc
        assert [p for _, p in back.received] == sent
    finally:
        back.client.disconnect(properties=None)
        back.close()
