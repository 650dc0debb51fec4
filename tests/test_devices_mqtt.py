"""Simulated wearables against a real Mosquitto: delivery, batches, store-and-forward, ACL, seq.

Each test takes a Mosquitto of its own (``fresh_stack(("mosquitto",))``): they stop the broker,
and a private broker also keeps their readings away from any bridge session on the shared stack.
A paho subscriber authenticated as the bridge user stands in for the bridge.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.common_support import wait_until
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import Settings
from vitalchain.core.payload.schema import message_problems
from vitalchain.core.payload.shards import device_topic
from vitalchain.devices.fleet import FleetStats, run_fleet, tick_interval
from vitalchain.devices.mqtt_auth import BRIDGE_USER, MqttCredentials
from vitalchain.devices.registry import (
    ProvisioningError,
    connack,
    load_registry,
    patient_for,
    provision_devices,
)
from vitalchain.devices.seqstore import SeqCounter
from vitalchain.devices.transport import ConnectRefused, MqttLink, PublishRejected

pytestmark = pytest.mark.e2e


class BridgeListener:
    """Subscribes to ``vitals/#`` (every shard topic, and the former unsharded ones) as the bridge
    user; a persistent session and auto-reconnect so it also gets what was published while the
    broker restarted."""

    def __init__(self, settings: Settings) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"test-listener-{uuid.uuid4().hex[:8]}",
                             clean_session=False)
        client.username_pw_set(BRIDGE_USER, MqttCredentials(settings.state_dir).password(BRIDGE_USER))
        client.reconnect_delay_set(0.1, 0.5)
        client.on_connect = lambda c, u, f, rc, p: c.subscribe("vitals/#", qos=1)
        client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        client.on_message = self._on_message
        self.client = client
        client.connect(settings.host, settings.mqtt_port, keepalive=10)
        client.loop_start()
        wait_until(self.subscribed.is_set, 10, "the listener's SUBACK")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, json.loads(message.payload)))

    def readings(self) -> list[tuple[str, dict[str, Any]]]:
        """(topic, reading) for every reading received, batches split."""
        with self.lock:
            messages = list(self.messages)
        out = []
        for topic, body in messages:
            for reading in body.get("readings", [body]):
                out.append((topic, reading))
        return out

    def ids(self) -> set[tuple[str, int]]:
        return {(r["device_id"], r["seq"]) for _, r in self.readings()}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(fresh_stack: Callable[..., Stack]) -> Stack:
    return fresh_stack(("mosquitto",))


@pytest.fixture
def listener(broker: Stack) -> Iterator[BridgeListener]:
    running = BridgeListener(broker.settings)
    yield running
    running.close()


def check_received(listener: BridgeListener, stats: FleetStats) -> None:
    """Everything acknowledged arrived, valid, on its own device's topic, with its patient."""
    wait_until(lambda: listener.ids() >= stats.acked_ids, 10, "every acknowledged reading")
    assert {i for i in listener.ids() if i[0] in {d for d, _ in stats.acked_ids}} == stats.acked_ids
    with listener.lock:
        messages = list(listener.messages)
    for topic, body in messages:
        device_id = topic.rsplit("/", 1)[1]
        assert topic == device_topic(device_id, Settings.mqtt_shards), topic  # its shard's topic
        assert message_problems(body, device_id=device_id) == [], body
        for reading in body.get("readings", [body]):
            assert reading["patient_id"] == patient_for(device_id)


async def test_fleet_delivers_every_reading(broker: Stack, listener: BridgeListener) -> None:
    settings = broker.settings
    devices = provision_devices(settings, 3, prefix="unit")
    stats = await run_fleet(settings, [d.device_id for d in devices], rate=20, count=10)
    expected = {(d.device_id, s) for d in devices for s in range(10)}
    assert stats.acked_ids == expected
    assert (stats.generated, stats.published, stats.acked) == (30, 30, 30)
    assert (stats.buffered, stats.dropped, stats.rejected) == (0, 0, 0)
    check_received(listener, stats)
    assert len(listener.messages) == 30  # one reading per message without --batch
    # Seqs of one device arrive in order (one connection, QoS 1, in-order delivery).
    for device in devices:
        seqs = [r["seq"] for _, r in listener.readings() if r["device_id"] == device.device_id]
        assert seqs == sorted(seqs)


async def test_batch_mode(broker: Stack, listener: BridgeListener) -> None:
    settings = broker.settings
    devices = provision_devices(settings, 2, prefix="batcher")
    stats = await run_fleet(settings, devices, rate=50, count=12, batch=5)
    assert stats.acked == 24 and stats.messages == 6  # 5 + 5 + 2 per device
    check_received(listener, stats)
    sizes = sorted(len(body["readings"]) for _, body in listener.messages if "readings" in body)
    assert sizes == [2, 2, 5, 5, 5, 5]


async def test_store_and_forward_across_broker_restart(broker: Stack,
                                                      listener: BridgeListener) -> None:
    settings = broker.settings
    devices = provision_devices(settings, 2, prefix="sf")
    stop = asyncio.Event()
    seen: list[FleetStats] = []
    fleet = asyncio.create_task(run_fleet(settings, devices, rate=20, stop=stop,
                                          progress_interval=0.05,
                                          on_progress=lambda s: seen.append(_copy(s))))

    async def until(predicate: Callable[[FleetStats], bool], what: str) -> FleetStats:
        for _ in range(300):
            if seen and predicate(seen[-1]):
                return seen[-1]
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last: {seen[-1].line()}")

    await until(lambda s: s.acked >= 10, "first acknowledgements")
    await asyncio.to_thread(broker.stop, "mosquitto")
    outage = await until(lambda s: s.connected == 0 and s.buffered >= 30,
                         "devices to buffer while the broker is down")
    acked_during_outage = outage.acked
    await asyncio.to_thread(broker.start, "mosquitto")
    await asyncio.to_thread(broker.wait_healthy, "mosquitto")
    await until(lambda s: s.acked >= acked_during_outage + outage.buffered, "the backlog")
    stop.set()
    stats = await fleet
    assert stats.dropped == 0 and stats.buffered == 0 and stats.rejected == 0
    assert stats.acked == stats.generated
    expected = {(d.device_id, s) for d in devices
                for s in range(sum(1 for i in stats.acked_ids if i[0] == d.device_id))}
    assert stats.acked_ids == expected  # every seq 0..n-1 of each device acknowledged
    check_received(listener, stats)


async def test_full_buffer_drops_oldest_and_counts(broker: Stack, listener: BridgeListener) -> None:
    settings = broker.settings
    [device] = provision_devices(settings, 1, prefix="tiny")
    await asyncio.to_thread(broker.stop, "mosquitto")
    seen: list[FleetStats] = []
    fleet = asyncio.create_task(run_fleet(settings, [device], rate=100, count=30, buffer_limit=10,
                                          progress_interval=0.05,
                                          on_progress=lambda s: seen.append(_copy(s))))
    for _ in range(200):
        if seen and seen[-1].generated == 30:
            break
        await asyncio.sleep(0.05)
    assert seen[-1].generated == 30 and seen[-1].buffered == 10 and seen[-1].dropped == 20
    await asyncio.to_thread(broker.start, "mosquitto")
    await asyncio.to_thread(broker.wait_healthy, "mosquitto")
    stats = await fleet
    assert stats.dropped == 20 and stats.acked == 10 and stats.buffered == 0
    assert stats.acked_ids == {(device.device_id, s) for s in range(20, 30)}  # the newest ten
    check_received(listener, stats)


async def test_acl_and_wrong_password(broker: Stack, listener: BridgeListener) -> None:
    settings = broker.settings
    mallory, victim = provision_devices(settings, 2, prefix="acl")
    link = MqttLink(settings.host, settings.mqtt_port, mallory.device_id, mallory.username,
                    mallory.password)
    await link.connect()
    forged = {"device_id": victim.device_id, "patient_id": victim.patient_id, "seq": 999,
              "ts_us": 1_700_000_000_000_000,
              "vitals": {"hr": 70, "spo2": 97, "rr": 14, "temp_c": 36.8, "sys": 118, "dia": 76}}
    with pytest.raises(PublishRejected):
        await asyncio.wait_for(link.publish(victim.topic, json.dumps(forged).encode()), 5)
    assert link._client.bare_pubacks == 0  # a reason code: paho's own decoding, not the fast path
    link.abort()
    # Then a legitimate message on the same broker: once it is in, the forged one would be too.
    link = MqttLink(settings.host, settings.mqtt_port, mallory.device_id, mallory.username,
                    mallory.password)
    await link.connect()
    own = dict(forged, device_id=mallory.device_id, patient_id=mallory.patient_id, seq=0)
    await asyncio.wait_for(link.publish(mallory.topic, json.dumps(own).encode()), 5)
    await link.close()
    wait_until(lambda: (mallory.device_id, 0) in listener.ids(), 10, "the legitimate message")
    assert all(topic != victim.topic for topic, _ in listener.messages)

    assert connack(settings, mallory.username, "not-the-password") != "accepted"
    assert connack(settings, mallory.username, mallory.password) == "accepted"
    bad = MqttLink(settings.host, settings.mqtt_port, mallory.device_id, mallory.username, "nope")
    with pytest.raises(ConnectRefused):
        await bad.connect()


async def test_publishes_larger_than_the_socket_buffer_all_arrive(broker: Stack) -> None:
    """MqttLink writes a publish on the next loop turn and watches the socket for writing only
    when bytes are left over: 20 publishes of 250 KB through a 4 KB send buffer must still all be
    written and acknowledged, and the watch released afterwards."""
    settings = broker.settings
    [device] = provision_devices(settings, 1, prefix="bulky")
    link = MqttLink(settings.host, settings.mqtt_port, device.device_id, device.username,
                    device.password)
    await link.connect()
    # a small send buffer, so that the first write surely stops short (loopback takes megabytes)
    link._client.socket().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    body = b"x" * 250_000  # under Mosquitto's message_size_limit (4 x max_payload_bytes)
    futures = [link.publish(device.topic, body) for _ in range(20)]
    await asyncio.sleep(0)  # one loop turn: the scheduled write ran
    assert link._watching_write  # the socket was full, so the loop watches it
    await asyncio.wait_for(asyncio.gather(*futures), 30)
    assert not link._watching_write and not link._client.want_write()
    await link.close()


@pytest.mark.parametrize("subscribed", [False, True])
async def test_bare_pubacks_settle_through_paho_bookkeeping(
        broker: Stack, request: pytest.FixtureRequest, subscribed: bool) -> None:
    """Mosquitto's success PUBACKs (packet id alone when someone subscribes, plus reason code
    0x10 "no matching subscribers" when nobody does) take the transport's fast path, yet paho's
    session state ends exactly as its own decoding leaves it: every publish resolved once, the
    in-flight count back to zero, no message left in the out table."""
    settings = broker.settings
    listener = request.getfixturevalue("listener") if subscribed else None
    [device] = provision_devices(settings, 1, prefix="bare")
    link = MqttLink(settings.host, settings.mqtt_port, device.device_id, device.username,
                    device.password, max_inflight=20)
    await link.connect()
    client = link._client
    for round_ in range(3):
        futures = [link.publish(device.topic, b'{"n":%d}' % i) for i in range(20)]
        await asyncio.wait_for(asyncio.gather(*futures), 10)
        assert all(f.result() is None for f in futures)
        assert client.bare_pubacks == 20 * (round_ + 1)
        assert client.lean_publishes == 20 * (round_ + 1)  # and the lean publish (sim4)
        assert client._inflight_messages == 0 and not client._out_messages
        assert not link._pending
    await link.close()
    if listener is not None:
        wait_until(lambda: sum(t == device.topic for t, _ in listener.messages) == 60, 10,
                   "the 60 messages at the subscriber")


async def test_seq_continues_after_restart(broker: Stack) -> None:
    settings = broker.settings
    [device] = provision_devices(settings, 1, prefix="restart")
    first = await run_fleet(settings, [device.device_id], rate=50, count=5)
    second = await run_fleet(settings, [device.device_id], rate=50, count=5)
    assert {s for _, s in first.acked_ids} == {0, 1, 2, 3, 4}
    assert {s for _, s in second.acked_ids} == {5, 6, 7, 8, 9}


def test_provisioning_is_stable_and_usable_at_once(broker: Stack) -> None:
    settings = broker.settings
    first = provision_devices(settings, 3, prefix="prov")
    again = provision_devices(settings, 3, prefix="prov")
    assert first == again  # same ids, patients and passwords
    assert [d.device_id for d in first] == ["prov-00001", "prov-00002", "prov-00003"]
    assert load_registry(settings)["prov-00002"] == patient_for("prov-00002")
    more = provision_devices(settings, 5, prefix="prov")  # two new ones: Mosquitto reloaded
    assert more[:3] == first
    assert connack(settings, more[-1].username, more[-1].password) == "accepted"


def _copy(stats: FleetStats) -> FleetStats:
    snapshot = FleetStats(**{k: v for k, v in vars(stats).items()
                             if k not in ("acked_ids", "errors")})
    return snapshot


async def test_thousand_devices_in_one_process(broker: Stack) -> None:
    settings = broker.settings
    devices = provision_devices(settings, 1000, prefix="crowd")
    stats = await run_fleet(settings, devices, rate=2, count=2)
    assert stats.acked_ids == {(d.device_id, s) for d in devices for s in (0, 1)}
    assert (stats.dropped, stats.buffered, stats.rejected) == (0, 0, 0)
    # The connect gate lets every device in at its first attempt (no timeouts, no retries) ...
    assert stats.connect_attempts == 1000
    # ... and the fleet's one-sync close left every seq file at the exact next seq.
    assert {SeqCounter.for_device(settings, d.device_id).peek for d in devices} == {2}


def test_keepalive_ticks_are_sparse_but_in_time() -> None:
    assert tick_interval(30) == 5.0  # not once a second per device
    assert tick_interval(1) == 1.0  # never more often than once a second
    for keepalive in (6, 10, 30, 60, 600):
        # a PINGREQ is due after keepalive s; the broker drops the client after 1.5 x keepalive
        assert keepalive + tick_interval(keepalive) < 1.5 * keepalive


async def test_an_idle_device_keeps_its_session_between_sparse_messages(broker: Stack) -> None:
    settings = broker.settings
    [device] = provision_devices(settings, 1, prefix="idle")
    # keepalive 6 s (a tick a second, PINGREQ by 7 s, dropped by the broker after 9 s) and
    # 13 s between the two readings: only the pings keep the one connection up.
    stats = await run_fleet(settings, [device], rate=1 / 13, count=2, keepalive=6)
    assert stats.acked_ids == {(device.device_id, 0), (device.device_id, 1)}
    assert stats.connect_attempts == 1


async def test_run_fleet_refuses_bad_arguments(broker: Stack) -> None:
    settings = broker.settings
    [device] = provision_devices(settings, 1, prefix="args")
    with pytest.raises(ValueError, match="twice"):
        await run_fleet(settings, [device, device.device_id], rate=1, count=1)
    with pytest.raises(ValueError, match="never ends"):
        await run_fleet(settings, [device], rate=1)
    with pytest.raises(ValueError, match="batch"):
        await run_fleet(settings, [device], rate=1, count=1, batch=101)
    with pytest.raises(ProvisioningError, match="not provisioned"):
        await run_fleet(settings, ["ghost-00001"], rate=1, count=1)
