"""The bridge's lean receive path (ingest/mqttlean.py, D49) against the real Mosquitto.

The lean path must deliver exactly what paho would (same packet ids, topics, payload bytes, in
order), leave everything off the common case to paho, and keep the session's QoS 1 semantics:
nothing acknowledged but what the application acks, unacknowledged messages redelivered (with
DUP) on a new connection through the same path, nothing of a lost connection read on the next.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.bridge_support import Device, Records, make_reading, provision_device, running_bridge
from tests.common_support import wait_until
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import Settings
from vitalchain.devices.mqtt_auth import BRIDGE_USER, MqttCredentials
from vitalchain.devices.registry import DeviceIdentity, provision_devices
from vitalchain.ingest.mqttlean import READ_CHUNK, LeanClient


@pytest.fixture
def broker(fresh_stack: Callable[..., Stack]) -> Stack:
    return fresh_stack(("mosquitto",))


class Subscriber:
    """A LeanClient with the bridge's user, a persistent session and manual acks; records every
    PUBLISH with the path that delivered it."""

    def __init__(self, settings: Settings, ack: Callable[[bytes], bool]) -> None:
        self.settings = settings
        self.ack = ack  # whether to PUBACK a payload at once
        self.got: list[tuple[str, int, str, bytes]] = []  # (path, mid, topic, payload)
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = self._connect(clean_start=True)

    def _connect(self, clean_start: bool) -> LeanClient:
        self.subscribed.clear()
        client = LeanClient(mqtt.CallbackAPIVersion.VERSION2, client_id=BRIDGE_USER,
                            protocol=mqtt.MQTTv5, manual_ack=True)
        client.username_pw_set(BRIDGE_USER,
                               MqttCredentials(self.settings.state_dir).password(BRIDGE_USER))
        client.on_connect = lambda c, u, f, rc, p: c.subscribe("vitals/#", qos=1)
        client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        client.on_message = self._paho
        client.on_lean_publish = lambda mid, qos, topic, payload: self._lean(
            client, mid, qos, topic, payload)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        client.connect(self.settings.host, self.settings.mqtt_port, keepalive=10,
                       clean_start=clean_start, properties=props)
        client.loop_start()
        wait_until(self.subscribed.is_set, 10, "the subscriber's SUBACK")
        return client

    def reconnect(self, graceful: bool = False) -> None:
        """A new connection to the same session; the old one dropped without a DISCONNECT, or
        ended by one (``graceful``: after the PUBACKs queued before it)."""
        old = self.client
        if graceful:
            old.disconnect()  # written after the queued PUBACKs; the loop thread then ends
        old.loop_stop()
        sock = old.socket()
        if sock is not None:
            sock.close()
        self.client = self._connect(clean_start=False)

    def _record(self, path: str, client: Any, mid: int, qos: int, topic: str,
                payload: bytes) -> None:
        with self.lock:
            self.got.append((path, mid, topic, payload))
        if qos == 1 and self.ack(payload):
            client.ack(mid, qos)

    def _lean(self, client: LeanClient, mid: int, qos: int, topic: str, payload: bytes) -> None:
        assert type(payload) is bytes and qos == 1
        self._record("lean", client, mid, qos, topic, payload)

    def _paho(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._record("paho", client, message.mid, message.qos, message.topic,
                     bytes(message.payload))

    def payloads(self, path: str | None = None) -> list[bytes]:
        with self.lock:
            return [p for (how, _, _, p) in self.got if path in (None, how)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publisher(settings: Settings, device: DeviceIdentity) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device.device_id,
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(device.username, device.password)
    client.max_inflight_messages_set(1000)
    client.connect(settings.host, settings.mqtt_port, keepalive=10)
    client.loop_start()
    return client


def _publish_all(client: mqtt.Client, items: list[tuple[str, bytes, int, Properties | None]]
                 ) -> None:
    infos = [client.publish(topic, body, qos=qos, properties=props)
             for topic, body, qos, props in items]
    for info in infos:
        info.wait_for_publish(10)
        assert info.is_published()


@pytest.fixture
def device(broker: Stack) -> DeviceIdentity:
    [one] = provision_devices(broker.settings, 1, prefix=f"lean{uuid.uuid4().hex[:4]}")
    return one


def test_lean_path_delivers_what_paho_would(broker: Stack, device: DeviceIdentity) -> None:
    """Many small PUBLISHes per read, payloads larger than one read (split across reads), and the
    cases off the lean path (properties, QoS 0) all arrive once, in order, byte for byte."""
    settings = broker.settings
    sub = Subscriber(settings, ack=lambda payload: True)
    pub = _publisher(settings, device)
    try:
        user = Properties(PacketTypes.PUBLISH)
        user.UserProperty = ("trace", "1")
        items: list[tuple[str, bytes, int, Properties | None]] = []
        for i in range(400):
            body = b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i * 37 % 900))
            if i % 100 == 50:
                body = b'{"n":%d,"big":"%s"}' % (i, b"y" * (READ_CHUNK + 5000 + i))
            qos, props = 1, None
            if i % 97 == 3:
                props = user  # a property: paho's decoding
            elif i % 89 == 7:
                qos = 0  # QoS 0: paho's path
            items.append((device.topic, body, qos, props))
        _publish_all(pub, items)
        wait_until(lambda: len(sub.payloads()) >= len(items), 20,
                   f"{len(items)} messages (have {len(sub.payloads())})")
        assert sub.payloads() == [body for _, body, _, _ in items]
        off_path = [body for _, body, qos, props in items if qos == 0 or props is not None]
        assert sub.payloads("paho") == off_path and len(off_path) >= 8
        assert sub.client.lean_publishes == len(items) - len(off_path)
        assert {topic for _, _, topic, _ in sub.got} == {device.topic}
        # Several packets per recv: far fewer reads than packets.
        assert sub.client.buffered_reads < len(items) / 2
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.close()


def test_unacked_messages_come_again_on_a_new_connection(broker: Stack,
                                                         device: DeviceIdentity) -> None:
    """Manual acks stay exact on the lean path: what is not acked is redelivered after a
    reconnect (DUP set, still the lean path: DUP is not in its way), under the same packet ids;
    what is acked is not."""
    settings = broker.settings
    held = threading.Event()  # while set, messages with "hold" are not acked
    held.set()
    sub = Subscriber(settings, ack=lambda payload: not (held.is_set() and b"hold" in payload))
    pub = _publisher(settings, device)
    try:
        items = [(device.topic, b'{"n":%d,"%s":1}' % (i, b"hold" if i % 3 == 0 else b"ok"), 1,
                  None) for i in range(60)]
        _publish_all(pub, items)
        wait_until(lambda: len(sub.payloads()) >= 60, 20, "60 messages")
        first = {p: mid for (_, mid, _, p) in sub.got}
        unacked = [body for _, body, _, _ in items if b"hold" in body]
        sub.got.clear()
        held.clear()
        sub.reconnect()
        wait_until(lambda: len(sub.payloads()) >= len(unacked), 20,
                   f"{len(unacked)} redeliveries (have {len(sub.payloads())})")
        assert sub.payloads("lean") == unacked  # redelivered once each, in order, lean path
        assert {p: mid for (_, mid, _, p) in sub.got} == {p: first[p] for p in unacked}
        # Everything is acked now: a marker published after a new reconnect is the only message.
        sub.got.clear()
        sub.reconnect(graceful=True)
        _publish_all(pub, [(device.topic, b'{"marker":1}', 1, None)])
        wait_until(lambda: sub.payloads() != [], 10, "the marker")
        assert sub.payloads() == [b'{"marker":1}']
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.close()


def test_ack_many_acknowledges_exactly_the_ids_given(broker: Stack, device: DeviceIdentity) -> None:
    """``ack_many`` writes paho's PUBACK for each id at once: the acked messages are gone from
    the session, the others come again after a reconnect."""
    settings = broker.settings
    sub = Subscriber(settings, ack=lambda payload: False)  # nothing acked one by one
    pub = _publisher(settings, device)
    try:
        items = [(device.topic, b'{"n":%d}' % i, 1, None) for i in range(40)]
        _publish_all(pub, items)
        wait_until(lambda: len(sub.payloads()) >= 40, 20, "40 messages")
        with sub.lock:
            got = list(sub.got)
        odd = [(mid, p) for (_, mid, _, p) in got if int(p[5:-1]) % 2]
        sub.client.ack_many([mid for mid, _ in odd])
        wait_until(lambda: not sub.client.want_write(), 10, "the PUBACKs written")
        sub.got.clear()
        sub.reconnect(graceful=True)
        even = [body for _, body, _, _ in items if int(body[5:-1]) % 2 == 0]
        wait_until(lambda: len(sub.payloads()) >= len(even), 20, "the unacked redelivered")
        _publish_all(pub, [(device.topic, b'{"marker":1}', 1, None)])
        wait_until(lambda: b'{"marker":1}' in sub.payloads(), 10, "the marker")
        assert sub.payloads() == [*even, b'{"marker":1}']
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.close()


@pytest.mark.e2e
def test_bridge_takes_the_lean_path_and_paho_for_the_rest(isolated: Settings) -> None:
    """The bridge forwards readings arriving by the lean path (a device's plain QoS 1 publish)
    and by paho's (a publish with an MQTT 5 property), each once."""
    dev = f"lean-{uuid.uuid4().hex[:8]}"
    password = provision_device(isolated, dev)
    raw = Records(isolated, isolated.raw_topic)
    with running_bridge(isolated, max_inflight=50) as bridge:
        device = Device(isolated, dev, password)
        for seq in range(20):
            device.publish(make_reading(dev, seq))
        device.wait_acked(20)
        device.close()  # one connection per device user (use_username_as_clientid)
        v5 = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{dev}-v5",
                         protocol=mqtt.MQTTv5)
        v5.username_pw_set(dev, password)
        v5.connect(isolated.host, isolated.mqtt_port, keepalive=10)
        v5.loop_start()
        try:
            props = Properties(PacketTypes.PUBLISH)
            props.ContentType = "application/json"
            info = v5.publish(f"vitals/{dev}", json.dumps(make_reading(dev, 20)).encode(), qos=1,
                              properties=props)
            info.wait_for_publish(10)
        finally:
            v5.disconnect()
            v5.loop_stop()
        items = raw.wait_for(21, 30, "21 readings")
        assert sorted(r["seq"] for _, r in items) == list(range(21))
        wait_until(lambda: bridge.counters.acked == 21, 10, "21 messages acked")
        assert bridge._client is not None and bridge._client.lean_publishes == 20
    raw.close()
