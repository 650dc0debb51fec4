"""The lean QoS 1 publish (``_Client.publish_qos1``) against paho's own ``publish``.

Two clients side by side, each handed one end of a socket pair as if connected (no broker is
needed to compare what they queue): the same calls must leave the same PUBLISH bytes queued and
the same session state (packet ids, out-table entries, in-flight count), and the PUBACK, the
window-full queueing and the resend after a reconnect must go as paho's own do.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalchain.devices.transport import (
    PUBACK_NO_PROPERTIES,
    PUBACK_SUCCESS,
    _Client,
    _topic_head,
)


def _client(max_inflight: int = 20) -> _Client:
    client = _Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lean-test", protocol=mqtt.MQTTv5,
                     reconnect_on_failure=False)
    client.max_inflight_messages_set(max_inflight)
    client.max_queued_messages_set(0)
    client.on_socket_register_write = lambda c, u, s: None  # as MqttLink: writes are the loop's
    return client


@pytest.fixture
def pair() -> Iterator[tuple[_Client, _Client]]:
    """(paho's publish, lean publish), each on a connected socket of its own."""
    socks = [socket.socketpair() for _ in range(2)]
    clients = (_client(), _client())
    for client, (a, _b) in zip(clients, socks, strict=True):
        client._sock = a
    yield clients
    for a, b in socks:
        a.close()
        b.close()


def _lean(client: _Client, topic: str, payload: bytes) -> tuple[int, int]:
    data, head = _topic_head(topic)
    return client.publish_qos1(data, head, payload)


def _state(client: _Client) -> tuple:
    """Everything of the session a publish touches, in comparable form."""
    messages = [(m.mid, m._topic, bytes(m.payload), m.qos, m.retain, m.dup, m.state, m.properties,
                 m.info.mid, m.info.rc, m.info.is_published())
                for m in client._out_messages.values()]
    packets = [(p["command"], p["mid"], p["qos"], p["pos"], p["to_process"], bytes(p["packet"]),
                p["info"].mid if p["info"] is not None else None) for p in client._out_packet]
    return messages, packets, client._inflight_messages, client._last_mid


@settings(max_examples=60, deadline=None)
@given(topic=st.text(st.characters(blacklist_characters="+#\x00", blacklist_categories=("Cs",)),
                     min_size=1, max_size=40),
       sizes=st.lists(st.sampled_from([0, 1, 100, 120, 121, 122, 123, 16_370, 16_380, 16_400,
                                       70_000]) | st.integers(0, 3000), min_size=1, max_size=12))
def test_same_packets_and_session_as_paho(topic: str, sizes: list[int]) -> None:
    """Payload sizes around the remaining length's one/two/three byte edges, any valid topic."""
    socks = [socket.socketpair() for _ in range(2)]
    paho_side, lean_side = _client(), _client()
    try:
        paho_side._sock, lean_side._sock = socks[0][0], socks[1][0]
        for i, size in enumerate(sizes):
            payload = bytes([65 + i % 26]) * size
            info = paho_side.publish(topic, payload, qos=1)
            assert _lean(lean_side, topic, payload) == (info.rc, info.mid)
        assert _state(lean_side) == _state(paho_side)
    finally:
        for a, b in socks:
            a.close()
            b.close()


def test_puback_settles_lean_entries_as_paho_ones(pair: tuple[_Client, _Client]) -> None:
    paho_side, lean_side = pair
    seen: dict[str, list[int]] = {"paho": [], "lean": []}
    paho_side.on_publish = lambda c, u, mid, rc, p: seen["paho"].append(mid)
    lean_side.on_publish = lambda c, u, mid, rc, p: seen["lean"].append(mid)
    infos = [paho_side.publish("vitals/d1", b"x" * i, qos=1) for i in range(5)]
    mids = [_lean(lean_side, "vitals/d1", b"x" * i)[1] for i in range(5)]
    for client in pair:
        for mid in (3, 1):
            with client._out_message_mutex:
                client._do_on_publish(mid, PUBACK_SUCCESS[0x10], PUBACK_NO_PROPERTIES)
    assert seen["paho"] == seen["lean"] == [3, 1]
    assert _state(lean_side) == _state(paho_side)
    assert [i.is_published() for i in infos] == [True, False, True, False, False]
    assert mids == [1, 2, 3, 4, 5]


def test_window_full_goes_through_paho_and_is_sent_on_puback() -> None:
    """With the in-flight window full paho queues the message (state "queued") and sends it when
    a PUBACK frees a slot; the lean path hands such a publish to paho, so both sides match."""
    socks = [socket.socketpair() for _ in range(2)]
    paho_side, lean_side = _client(max_inflight=2), _client(max_inflight=2)
    try:
        paho_side._sock, lean_side._sock = socks[0][0], socks[1][0]
        for i in range(4):
            paho_side.publish("t", b"%d" % i, qos=1)
            _lean(lean_side, "t", b"%d" % i)
        assert _state(lean_side) == _state(paho_side)
        assert [m.state for m in lean_side._out_messages.values()] == [
            mqtt.mqtt_ms_wait_for_puback] * 2 + [mqtt.mqtt_ms_queued] * 2
        for client in (paho_side, lean_side):
            with client._out_message_mutex:
                client._do_on_publish(1, PUBACK_SUCCESS[0x00], PUBACK_NO_PROPERTIES)
        assert _state(lean_side) == _state(paho_side)
        assert len(lean_side._out_packet) == 3  # the third message went out on the PUBACK
    finally:
        for a, b in socks:
            a.close()
            b.close()


def test_resend_after_reconnect_is_paho_s(pair: tuple[_Client, _Client]) -> None:
    """What paho resends from after a reconnect (the out table, marked dup) is the same."""
    paho_side, lean_side = pair
    for i in range(3):
        paho_side.publish("vitals/d2", b"r%d" % i, qos=1)
        _lean(lean_side, "vitals/d2", b"r%d" % i)
    for client in pair:
        client._out_packet.clear()
        client._messages_reconnect_reset_out()
        client._update_inflight()  # paho's own resend of what is not in flight
    assert _state(lean_side) == _state(paho_side)
    assert all(m.dup and m.state == mqtt.mqtt_ms_publish for m in lean_side._out_messages.values())


def test_not_connected_and_bad_topics_take_paho_s_answers() -> None:
    client = _client()
    rc, mid = _lean(client, "vitals/d3", b"{}")  # no socket: paho keeps it for the reconnect
    assert rc == mqtt.MQTTErrorCode.MQTT_ERR_NO_CONN and mid == 1
    assert client._out_messages[1].state == mqtt.mqtt_ms_publish
    for bad in ("vitals/+", "vitals/#", "x" * 65_536):
        with pytest.raises(ValueError):
            _topic_head(bad)
    assert _topic_head("") == (b"", b"")
