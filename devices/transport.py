"""One MQTT connection driven by the asyncio event loop: no thread, no busy loop.

paho does the protocol; its socket callbacks hand the socket to the loop's reader/writer watches,
so thousands of devices share one thread. (aiomqtt does the same but leaves a publish waiting
until its timeout when the connection drops, and starts a timer task per client; here every
pending publish fails the moment the link goes down, and one fleet-wide timer drives keepalives.)

MQTT 5 with ``clean_start=False`` and a session expiry: the device keeps a persistent session
under its stable client id. A PUBACK with a failure reason code (5.0 brokers tell a client it was
not authorised) fails the publish with ``PublishRejected``; only a successful PUBACK resolves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from vitalchain.errors import Refused, Unavailable

SESSION_EXPIRY_S = 7 * 24 * 3600


def _connect_properties() -> Properties:
    """The CONNECT properties every device sends (a persistent session of SESSION_EXPIRY_S).

    Built once: paho's ``Properties()`` rebuilds its whole name and type tables per instance
    (about 40 µs here), and a profile of 5,000 devices connecting had it at a quarter of the
    connect path. paho only packs these (``_send_connect``), it never changes them, so one
    instance serves every link.
    """
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = SESSION_EXPIRY_S
    return properties


CONNECT_PROPERTIES = _connect_properties()

# What paho hands ``on_publish`` for a PUBACK without properties and with a success reason code:
# remaining length 2 (MQTT 5 omits the code when it is 0x00 Success, 3.4.2.1) or 3 (the code
# alone; Mosquitto sends 0x10 "No matching subscribers" when nobody subscribes). Shared, never
# changed: the callback only reads them.
PUBACK_SUCCESS = {0x00: ReasonCode(PacketTypes.PUBACK, "Success"),
                  0x10: ReasonCode(PacketTypes.PUBACK, "No matching subscribers")}
PUBACK_NO_PROPERTIES = Properties(PacketTypes.PUBACK)


# Every lean publish's MQTTMessageInfo shares this condition (see _LeanInfo).
_SHARED_CONDITION = threading.Condition()
_MAX_REMAINING_LENGTH = 268_435_455  # MQTT's largest packet body (4-byte remaining length)


class _LeanInfo(mqtt.MQTTMessageInfo):
    """paho's ``MQTTMessageInfo`` without a ``threading.Condition`` of its own.

    paho builds a ``Condition`` (an ``RLock`` and a waiter list) for every QoS 1 publish so that a
    caller can block in ``wait_for_publish``; here nobody does (``MqttLink`` resolves its own
    future from ``on_publish``), and the construction was the largest single part of paho's
    ``publish`` at 1,000 devices x 5 Hz x 2 (docs/PERFORMANCE.md, "sim4"). One condition shared by
    all of them keeps ``wait_for_publish`` and ``is_published`` correct for anyone who still
    calls them: ``_set_as_published`` wakes every waiter, and each re-checks its own flag.
    """

    __slots__ = ()

    def __init__(self, mid: int) -> None:
        self.mid = mid
        self._published = False
        self._condition = _SHARED_CONDITION
        self.rc = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0

    def _set_as_published(self) -> None:
        with self._condition:
            self._published = True
            self._condition.notify_all()


class _LeanMessage(mqtt.MQTTMessage):
    """The out-table entry of a QoS 1 publish, field for field what ``Client.publish`` stores
    (state "waiting for PUBACK", no dup, no retain, no properties), with a :class:`_LeanInfo`."""

    __slots__ = ()

    def __init__(self, mid: int, topic: bytes, payload: bytes) -> None:
        self.timestamp = mqtt.time_func()
        self.state = mqtt.mqtt_ms_wait_for_puback
        self.dup = False
        self.mid = mid
        self._topic = topic
        self.payload = payload
        self.qos = 1
        self.retain = False
        self.info = _LeanInfo(mid)
        self.properties = None


class LinkDown(Unavailable):
    """The connection is gone (or never came up); pending publishes are unacknowledged."""


class ConnectRefused(LinkDown):
    """The broker answered CONNECT with a failure (bad credentials, not authorised, ...)."""


class PublishRejected(Refused):
    """The broker acknowledged the publish with a failure reason code; resending will not help."""


class _Client(mqtt.Client):
    """paho's client, handed a TCP socket the event loop already connected.

    paho's ``connect`` opens its socket with a *blocking* ``socket.create_connection``: one
    device's connect then stops every other device on the loop, and when a fleet of 5,000 connects
    at once the broker's accept queue overflows, dropped SYNs are retried after a second, and the
    whole simulator stood still for seconds at a time (docs/PERFORMANCE.md, "Device simulator at
    5,000 devices"). ``MqttLink.connect`` connects the socket with ``loop.sock_connect`` instead
    and paho takes it from here (``_create_socket_connection`` is paho's own hook for making the
    socket; the MQTT CONNECT is still paho's).
    """

    ready_socket: socket.socket | None = None
    bare_pubacks = 0  # PUBACKs taken by the fast path below (tests check it is the one used)
    lean_publishes = 0  # publishes queued by publish_qos1's own path (likewise)

    def _handle_pubackcomp(self, cmd: Any) -> mqtt.MQTTErrorCode:
        """A bare PUBACK (packet id and a success code, no properties) without paho's decoding.

        paho decodes every PUBACK into a fresh ``ReasonCode`` and ``Properties`` (each rebuilds
        its tables per instance): at 1,000 devices x 5 Hz in batches of 2 that was 6 % of the
        simulator's samples, for two bytes of packet id (docs/PERFORMANCE.md, "Device simulator:
        cheaper per reading"). The acknowledgement itself still goes through paho's own
        ``_do_on_publish`` (the in-flight count, the session's out-message table, the callback),
        so QoS 1 is paho's as before; a PUBACK with properties or any other reason code (a
        failure, say, which must fail the publish), a short one and PUBCOMP take paho's path.
        """
        packet = self._in_packet["packet"]
        size = len(packet)
        reason = (PUBACK_SUCCESS[0x00] if size == 2 else
                  PUBACK_SUCCESS.get(packet[2]) if size == 3 else None)
        if cmd != "PUBACK" or reason is None or self._protocol != mqtt.MQTTv5:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                self.bare_pubacks += 1
                return self._do_on_publish(mid, reason, PUBACK_NO_PROPERTIES)
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish_qos1(self, topic: bytes, head: bytes, payload: bytes) -> tuple[int, int]:
        """``publish(topic, payload, qos=1)`` for the common case, as ``(rc, mid)``.

        ``head`` is the topic as the packet carries it (two length bytes, then the topic), which
        the caller checked once (no wildcard, at most 65,535 bytes). The session state is
        paho's own, entry for entry: the same packet id from ``_mid_generate``, an out-table
        entry in state "waiting for PUBACK" (what paho resends from after a reconnect and what
        ``_do_on_publish`` settles), the in-flight count, the packet through ``_packet_queue``
        (so the write and the socket callbacks are paho's). What is left out is the generic work
        per publish (topic and payload checks, a ``Condition``, the packet built byte by byte):
        7 % of the simulator's samples at 1,000 devices x 5 Hz x 2 (docs/PERFORMANCE.md, "sim4").
        Anything else (not connected, the in-flight window full so paho would queue, MQTT 3, an
        oversized packet, a payload that is not ``bytes``) goes through paho's ``publish``.
        """
        size = len(head) + 3 + len(payload)  # topic, packet id (2), empty properties (1)
        inflight_max = self._max_inflight_messages
        queued_max = self._max_queued_messages
        if (self._sock is None or self._protocol != mqtt.MQTTv5 or type(payload) is not bytes
                or size > _MAX_REMAINING_LENGTH
                or (inflight_max and self._inflight_messages >= inflight_max)
                or (queued_max and len(self._out_messages) >= queued_max)):
            info = super().publish(topic.decode(), payload, qos=1)
            return info.rc, info.mid
        mid = self._mid_generate()
        with self._out_message_mutex:
            if mid in self._out_messages:  # paho's answer to a packet id still in use
                return mqtt.MQTTErrorCode.MQTT_ERR_QUEUE_SIZE, mid
            message = self._out_messages[mid] = _LeanMessage(mid, topic, payload)
            self._inflight_messages += 1
            self.lean_publishes += 1
            packet = self._pack_remaining_length(bytearray(b"\x32"), size)  # PUBLISH, QoS 1
            packet += head + mid.to_bytes(2, "big") + b"\x00" + payload
            rc = self._packet_queue(mqtt.PUBLISH, packet, mid, 1, message.info)
            message.info.rc = rc
            return rc, mid

    def _create_socket_connection(self) -> socket.socket:
        sock, self.ready_socket = self.ready_socket, None
        if sock is None:
            return super()._create_socket_connection()
        return sock


def _topic_head(topic: str) -> tuple[bytes, bytes]:
    """(topic bytes, the topic as a PUBLISH carries it) after paho's own checks, once per topic;
    ``(b"", b"")`` for an empty topic, which is left to paho's ``publish``."""
    data = topic.encode("utf-8")
    mqtt.Client._raise_for_invalid_topic(data)  # wildcards, length: paho's ValueError
    return (data, len(data).to_bytes(2, "big") + data) if data else (b"", b"")


class MqttLink:
    def __init__(self, host: str, port: int, client_id: str, username: str, password: str,
                 keepalive: int = 30, max_inflight: int = 20) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self._loop = asyncio.get_running_loop()
        client = _Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5, reconnect_on_failure=False)
        client.username_pw_set(username, password)
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._client = client
        self._connected: asyncio.Future[None] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._heads: dict[str, tuple[bytes, bytes]] = {}  # topic -> (bytes, as the packet has it)
        self._flush_due = False  # a _flush is scheduled
        self._watching_write = False  # the socket is registered with the loop for writing

    # --- paho callbacks (all run on the loop's thread) -------------------------------------
    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._loop.add_reader(sock, self._read)

    def _read(self) -> None:
        self._client.loop_read(max_packets=16)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._watching_write = False

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho has a packet to send. Registering the socket for writing at once cost two
        # epoll_ctl calls and a selector round per message (a device's publishes seldom find the
        # socket full); instead write once the current callback is done, and watch the socket
        # only when that left bytes behind.
        if not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        client = self._client
        sock = client.socket()
        if sock is None:
            return
        client.loop_write()
        if client.want_write() and not self._watching_write and client.socket() is sock:
            self._watching_write = True
            self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._watching_write:
            self._watching_write = False
            self._loop.remove_writer(sock)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if self._connected.done():
            return
        if reason.is_failure:
            self._connected.set_exception(ConnectRefused(f"CONNACK refused: {reason}"))
        else:
            self._connected.set_result(None)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        error = LinkDown(f"disconnected: {reason}")
        if not self._connected.done():
            self._connected.set_exception(error)
            self._connected.exception()  # whoever awaits still gets it; nobody must
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()
        self._pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        future = self._pending.pop(mid, None)
        if future is None or future.done():
            return
        if getattr(reason, "is_failure", False):
            future.set_exception(PublishRejected(f"PUBACK {reason}"))
        else:
            future.set_result(None)

    # --- API -------------------------------------------------------------------------------
    async def connect(self, timeout: float = 10.0) -> None:
        sock: socket.socket | None = None
        try:
            family, kind, proto, _name, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            # The TCP handshake on the loop (see _Client); paho then sends CONNECT on it.
            await asyncio.wait_for(self._loop.sock_connect(sock, address), timeout)
            self._client.ready_socket = sock
            self._client.connect(self.host, self.port, keepalive=self.keepalive,
                                 clean_start=False, properties=CONNECT_PROPERTIES)
        except (TimeoutError, OSError) as exc:
            self._client.ready_socket = None
            if sock is not None:
                sock.close()
            self._fail_closed()
            raise LinkDown(f"cannot reach {self.host}:{self.port}: {exc or 'timed out'}") from exc
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), timeout)
        except TimeoutError as exc:
            self.abort()
            raise LinkDown(f"no CONNACK within {timeout}s") from exc
        except LinkDown:
            self.abort()
            raise

    def _fail_closed(self) -> None:
        if not self._connected.done():
            self._connected.set_exception(LinkDown("not connected"))
            self._connected.exception()
        if not self.closed.done():
            self.closed.set_result(None)

    def publish(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """Send with QoS 1; the future resolves on a successful PUBACK."""
        if self.closed.done():
            raise LinkDown("link is closed")
        head = self._heads.get(topic)
        if head is None:
            head = self._heads[topic] = _topic_head(topic)
        if head[0]:
            rc, mid = self._client.publish_qos1(head[0], head[1], payload)
        else:  # a topic paho treats its own way (empty, say): its publish, its errors
            info = self._client.publish(topic, payload, qos=1)
            rc, mid = info.rc, info.mid
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise LinkDown(f"publish failed: {mqtt.error_string(rc)}")
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending[mid] = future
        return future

    def tick(self) -> None:
        """Keepalive bookkeeping; the fleet calls this about once a second for every link."""
        if not self.closed.done():
            self._client.loop_misc()

    async def close(self, timeout: float = 2.0) -> None:
        """Orderly DISCONNECT (the broker keeps the session)."""
        if self.closed.done():
            return
        self._client.disconnect()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        self.abort()

    def abort(self) -> None:
        """Drop the socket without DISCONNECT (as a device losing power or radio would)."""
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
            self._watching_write = False
        with contextlib.suppress(Exception):
            self._client._reset_sockets()  # paho has no public "close without DISCONNECT"
        self._on_disconnect(self._client, None, None, "aborted", None)
