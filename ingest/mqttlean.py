"""paho's client with a lean receive path for the bridge's common PUBLISH (docs/DECISIONS.md D49).

Why: the bridge reads every device message through paho, and paho reads each packet with three
``recv`` calls (the command byte, the remaining length, the body), one packet per ``select``
(``loop_read`` reads ``len(out_messages) + len(in_messages)`` packets, one for a client that only
subscribes), and then builds a ``PublishPacket``, an MQTT 5 ``Properties`` object, an
``MQTTMessage`` and a debug log call per PUBLISH, and walks its topic matcher, none of which the
bridge uses. At 1,000 devices x 5 Hz in messages of 2 that was 29 % of the bridge's samples
(docs/PERFORMANCE.md, "The bridge cheaper per MQTT message").

What :class:`LeanClient` changes, and only this:

- reads: ``_sock_recv`` serves paho's reads from one ``recv`` of up to :data:`READ_CHUNK` bytes,
  and ``loop_read`` handles every whole packet in that buffer before paho's loop selects again
  (the buffer belongs to one socket: a new connection starts with an empty one, so no byte of a
  lost connection is ever read on the next);
- the common PUBLISH (MQTT 5, QoS 1, no retain flag, a non-empty UTF-8 topic, no properties, whole
  in the buffer; DUP set or not) is handed to :attr:`LeanClient.on_lean_publish` as
  ``(mid, qos, topic, payload)`` under paho's callback lock, without paho's per-packet objects.
  It is acknowledged exactly as before: the client runs with ``manual_ack`` (the fast path is off
  without it), so the bridge's own ``ack(mid, 1)`` sends the PUBACK, after Kafka took the records.

Everything else (CONNACK, SUBACK, PINGRESP, a PUBLISH with properties, QoS 0 or 2, a retained one,
a topic that is not UTF-8, a packet split across reads) goes through paho's own code unchanged, fed
from the same buffer. paho's session state for received QoS 1 messages is nothing but the
manual ack (it keeps no table of them), so skipping its decoding changes no session behaviour:
packet-id reuse, redelivery with DUP and reconnects stay paho's and the bridge's
(:mod:`vitalchain.ingest.inflight`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

READ_CHUNK = 1 << 16  # bytes asked of the socket per recv (a few hundred common PUBLISHes)
_PUBLISH = 0x30
_PUBACK = 0x40
_PUBACK_HEAD = bytes([_PUBACK, 2])  # a PUBACK of packet id alone: success, no properties
_SUCCESS = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
_AGAIN = mqtt.MQTTErrorCode.MQTT_ERR_AGAIN
_CONN_LOST = mqtt.MQTTErrorCode.MQTT_ERR_CONN_LOST

# (mid, qos, topic, payload) of one common PUBLISH.
LeanPublish = Callable[[int, int, str, bytes], None]


class LeanClient(mqtt.Client):
    """A paho ``Client`` whose common PUBLISHes skip paho's decoding (see the module docstring).

    Set :attr:`on_lean_publish` (and ``manual_ack=True``) to take the lean path; ``on_message``
    still gets every PUBLISH off it. Not for clients that use ``message_callback_add``: the lean
    path calls ``on_lean_publish`` for every topic."""

    on_lean_publish: LeanPublish | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""  # bytes read from _rsock, served from _rpos on
        self._rpos = 0
        self._rsock: Any = None
        self.lean_publishes = 0  # PUBLISHes taken by the lean path (tests check it is used)
        self.buffered_reads = 0  # recv calls made (tests compare them to the packets read)

    # --- acks ------------------------------------------------------------------------------
    def ack_many(self, mids: list[int]) -> None:
        """PUBACK the QoS 1 messages ``mids``, in this order: the bytes paho's ``ack(mid, 1)``
        writes for each (a packet id and nothing else), queued as one write with one wake-up of
        the network thread instead of one each (paho writes a byte to its socket pair per
        queued packet, and its thread then selects, reads it and writes). Like ``ack``, only
        with ``manual_ack``."""
        if not mids or not self._manual_ack:
            return
        packet = b"".join([_PUBACK_HEAD + mid.to_bytes(2, "big") for mid in mids])
        self._packet_queue(_PUBACK, packet, 0, 1)

    # --- reads -----------------------------------------------------------------------------
    def _sock_recv(self, bufsize: int) -> bytes:
        """paho's read, served from a buffer filled by one large ``recv`` of this socket."""
        if self._rsock is not self._sock:  # a new connection: nothing of the old one is kept
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            data = super()._sock_recv(max(bufsize, READ_CHUNK))
            self.buffered_reads += 1
            if not data:
                return data  # connection closed: paho sees it as before
            self._rbuf, self._rpos = buf, pos = data, 0
        chunk = buf[pos:pos + bufsize]
        self._rpos = pos + len(chunk)
        return chunk

    def _buffered(self) -> bool:
        return self._rsock is self._sock and self._rpos < len(self._rbuf)

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        """paho's ``loop_read``, then every further packet already in the buffer: bytes held
        here are not seen by ``select``, so none may be left behind."""
        rc = super().loop_read(max_packets)
        while rc == _SUCCESS and self._sock is not None and self._buffered():
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == _AGAIN:
                return _SUCCESS
        return rc

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        if self.on_lean_publish is not None and self._in_packet["command"] == 0:
            rc = self._lean_read()
            if rc is not None:
                return rc
        return super()._packet_read()

    # --- the common PUBLISH ----------------------------------------------------------------
    def _lean_read(self) -> mqtt.MQTTErrorCode | None:
        """Take the next packet if it is a common PUBLISH, reading more of the socket while
        it is incomplete. None: paho's ``_packet_read`` takes the packet (from the buffer)."""
        if self._rsock is not self._sock:
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
        for _ in range(100):  # paho's bound on reads for one packet, too
            buf, pos = self._rbuf, self._rpos
            missing = self._common_publish(buf, pos)
            if missing == 0:
                return _SUCCESS
            if missing < 0:
                return None
            try:
                more = super()._sock_recv(max(READ_CHUNK, missing))
            except BlockingIOError:
                return None if pos < len(buf) else _AGAIN
            except OSError as err:
                if pos < len(buf):
                    return None  # paho reads what is here, then meets the error itself
                self._easy_log(mqtt.MQTT_LOG_ERR, "failed to receive on socket: %s", err)
                return _CONN_LOST
            self.buffered_reads += 1
            if not more:
                return None if pos < len(buf) else _CONN_LOST
            self._rbuf, self._rpos = buf[pos:] + more, 0
        return None

    def _common_publish(self, buf: bytes, pos: int) -> int:
        """Hand the common PUBLISH at ``buf[pos:]`` to ``on_lean_publish`` and return 0; or
        return how many more bytes it needs at least; or -1 for any other packet."""
        end = len(buf)
        if pos >= end:
            return 2
        if buf[pos] & 0xF7 != _PUBLISH | 0x02 or not self._manual_ack:  # QoS 1, no retain
            return -1
        if self._protocol != mqtt.MQTTv5:
            return -1
        length, shift, i = 0, 0, pos + 1
        while True:  # the remaining length: at most 4 bytes of 7 bits
            if i >= end:
                return 1
            if shift > 21:
                return -1  # malformed: paho refuses it
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
        stop = i + length
        if stop > end:
            return stop - end
        if length < 5:
            return -1
        slen = (buf[i] << 8) | buf[i + 1]
        at = i + 2 + slen
        # Topic, packet id and a zero properties length must fit; an empty topic means an alias.
        if slen == 0 or at + 3 > stop or buf[at + 2] != 0:
            return -1
        try:
            topic = buf[i + 2:at].decode("utf-8")
        except UnicodeDecodeError:
            return -1  # paho's path names it in its log and hands the callback a bad topic
        mid = (buf[at] << 8) | buf[at + 1]
        payload = buf[at + 3:stop]
        self._rpos = stop
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        self.lean_publishes += 1
        with self._in_callback_mutex:
            self.on_lean_publish(mid, 1, topic, payload)  # type: ignore[misc]
        return 0
