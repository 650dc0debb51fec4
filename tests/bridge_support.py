"""Helpers for the bridge tests (no tests here): devices, a bridge in a thread, Kafka reads."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
from kafka import KafkaConsumer

from tests.common_support import wait_until
from vitalchain.config import Settings
from vitalchain.core.payload.record import record_readings
from vitalchain.devices.mqtt_admin import add_to_broker
from vitalchain.devices.mqtt_auth import MqttCredentials, bridge_user
from vitalchain.devices.mqtt_check import connack
from vitalchain.ingest.bridge import Bridge, forget_session
from vitalchain.ingest.bridge_provision import provision_bridge


def unique_device(prefix: str = "dev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_reading(device: str, seq: int, **vitals: Any) -> dict[str, Any]:
    values = {"hr": 72, "spo2": 98, "rr": 14, "temp_c": 36.6, "sys": 120, "dia": 80, **vitals}
    return {"device_id": device, "patient_id": "pat-1", "seq": seq,
            "ts_us": time.time_ns() // 1000 - 1000, "vitals": values}


def _try_connect(settings: Settings, user: str, password: str) -> bool:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex}")
    client.username_pw_set(user, password)
    result: dict[str, Any] = {}
    client.on_connect = lambda c, u, f, reason, p: result.setdefault("rc", reason)
    try:
        client.connect(settings.host, settings.mqtt_port, keepalive=10)
        deadline = time.monotonic() + 3
        while "rc" not in result and time.monotonic() < deadline:
            client.loop(timeout=0.05)
        client.disconnect()
    except OSError:
        return False
    return "rc" in result and not result["rc"].is_failure


def provision_device(settings: Settings, device: str) -> str:
    """Add the device's MQTT user to the store and to the running Mosquitto (dynamic-security
    plugin, no SIGHUP); the broker's answer means it is in effect, so it is accepted at once."""
    return provision_devices(settings, [device])[device]


def provision_devices(settings: Settings, devices: list[str]) -> dict[str, str]:
    """Add several devices' MQTT users at once (one round of admin commands); returns their
    passwords, each checked by a real CONNECT."""
    users = MqttCredentials(settings.state_dir).add_users(dict.fromkeys(devices))
    passwords = {device: users[device] for device in devices}
    assert add_to_broker(settings, passwords), "mosquitto is not running"
    for device, password in passwords.items():
        assert _try_connect(settings, device, password), f"device {device} refused after provisioning"
    return passwords


class Device:
    """A device publishing QoS 1 with a persistent session: paho resends what the broker has not
    acknowledged after a reconnect; anything paho could not even queue is republished."""

    def __init__(self, settings: Settings, device: str, password: str) -> None:
        self.device = device
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device,
                                  clean_session=False)
        self.client.username_pw_set(device, password)
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(0.2, 1)
        self.sent: list[tuple[str, bytes, mqtt.MQTTMessageInfo]] = []
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, reason, p: self.connected.set()
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.connect(settings.host, settings.mqtt_port, keepalive=10)
        self.client.loop_start()
        wait_until(self.connected.is_set, 10, f"{device} connected")

    def publish(self, payload: bytes | dict[str, Any], topic: str | None = None) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        topic = topic or f"vitals/{self.device}"
        self.sent.append((topic, raw, self.client.publish(topic, raw, qos=1)))

    def unacked(self) -> int:
        """Publishes the broker has not acknowledged. One paho could not send (no connection at
        the time: rc != success) is republished once connected; the duplicate that may result
        is allowed at this layer."""
        pending = 0
        for index, (topic, raw, info) in enumerate(self.sent):
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                if self.connected.is_set():
                    self.sent[index] = (topic, raw, self.client.publish(topic, raw, qos=1))
                pending += 1
            elif not info.is_published():
                pending += 1
        return pending

    def wait_acked(self, timeout: float) -> None:
        wait_until(lambda: self.unacked() == 0, timeout,
                   f"{self.device}: broker acked all {len(self.sent)} publishes")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Records:
    """Everything on one Kafka topic so far, read from the start.  On the raw topic ``items`` are
    *readings* (a record of version 2 holds a message's readings: each is listed with the
    record's key, as ``record_readings`` shows it; a bundle of several devices' messages, which
    has none, with the reading's device id); ``records`` counts the Kafka records."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = KafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                                      auto_offset_reset="earliest", enable_auto_commit=False,
                                      group_id=None, consumer_timeout_ms=500)
        self.raw = topic == settings.raw_topic
        self.items: list[tuple[bytes, dict[str, Any]]] = []
        self.records = 0

    def poll(self) -> list[tuple[bytes, dict[str, Any]]]:
        for batch in self.consumer.poll(timeout_ms=300, max_records=5000).values():
            self.records += len(batch)
            if self.raw:
                # A bundle of several devices' messages has no key: each reading is listed
                # with its device's (what the record's key is for one device's messages).
                self.items += [(r.key or item["device_id"].encode(), item) for r in batch
                               for item in record_readings(r.value)]
            else:
                self.items += [(r.key, json.loads(r.value)) for r in batch]
        return self.items

    def wait_for(self, count: int, timeout: float, what: str) -> list[tuple[bytes, dict]]:
        wait_until(lambda: len(self.poll()) >= count, timeout,
                   f"{count} records of {what} (have {len(self.items)})")
        return self.items

    def close(self) -> None:
        self.consumer.close()


@contextlib.contextmanager
def running_bridge(settings: Settings, **options: Any) -> Iterator[Bridge]:
    """A bridge in a thread with a group and instance of its own; its session removed after."""
    options.setdefault("group", f"test-{uuid.uuid4().hex[:8]}")
    options.setdefault("instance", random.randint(1000, 9999))
    provision_bridge(settings, options["instance"])  # each instance is its own MQTT user (D7)
    try:
        with bridge_thread(Bridge(settings, **options), stop_timeout=30) as bridge:
            yield bridge
    finally:
        with contextlib.suppress(OSError, TimeoutError):
            forget_session(settings, options["instance"])


@contextlib.contextmanager
def bridge_thread(bridge: Bridge, stop_timeout: float = 30) -> Iterator[Bridge]:
    """Run ``bridge`` in a thread until the block ends; it must subscribe, live and stop in time."""
    thread = threading.Thread(target=bridge.run, name="bridge", daemon=True)
    thread.start()
    try:
        wait_until(bridge.subscribed.is_set, 20, "bridge subscribed")
        yield bridge
        assert thread.is_alive(), "bridge thread died"
    finally:
        bridge.stop()
        thread.join(stop_timeout)
        assert not thread.is_alive(), f"bridge did not stop within {stop_timeout:.0f}s"


def bridge_instance_user(settings: Settings, instance: int = 7) -> None:
    """Provision bridge ``instance`` on a running broker; it must be accepted at once."""
    assert provision_bridge(settings, instance) is True
    user = bridge_user(instance)
    assert connack(settings, user, MqttCredentials(settings.state_dir).password(user)) == "accepted"
