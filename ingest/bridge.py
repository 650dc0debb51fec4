"""The MQTT→Kafka bridge: at-least-once from Mosquitto to the raw and dead-letter topics.

Guarantee: an MQTT message is acknowledged (PUBACK) to Mosquitto only after Kafka has acknowledged
(``acks='all'``) every record made from it: the record on ``raw_topic`` holding all its good
readings (record version 2, :mod:`vitalchain.core.payload.record`), which may travel in a bundle
with other messages' records bound for the same partition (``_gather``: gathered while the event
queue has more, sent when it is empty; docs/STREAM.md "The raw topic's records"), and each
rejection on ``dlq_topic``. Until then the message belongs to the bridge's persistent session in Mosquitto, so a
crash of the bridge, a Kafka outage or a broker restart redelivers it instead of losing it. The
price is duplicates (a record produced, the ack lost); the stream removes those.

Threads and who does what:
- paho's network thread (``loop_start``) only turns each PUBLISH into an event on ``_events``,
  after waiting while the bridge is full (it reads ``InFlight.released``, a counter the bridge's
  thread only increases); the client is :class:`vitalchain.ingest.mqttlean.LeanClient`, which
  reads the socket in chunks and hands the common PUBLISH over without paho's per-packet
  objects (D49);
- kafka-python's I/O thread only turns each delivery result into an event on ``_events``;
- :meth:`Bridge.run`'s thread owns all state: validates, produces, counts, retries and acks.
  ``Client.ack`` (and ``LeanClient.ack_many``, the PUBACKs of one Kafka acknowledgement in one
  write) from a thread other than paho's is safe with ``loop_start``: like ``publish`` it only
  appends to paho's outgoing deque and wakes the network thread through its socket pair.

Memory is bounded by ``max_inflight``, sent as MQTT 5's Receive Maximum: a broker should send at
most that many unacknowledged QoS 1 messages. Mosquitto 2.0.11 sends more once acks flow and a
backlog is queued (D18), so the bridge also holds back itself: paho's thread waits in
``_on_message`` while the bridge holds ``max_inflight`` messages, which stops reading the socket
until Kafka has taken some (counted in ``over_receive_maximum``). Overload slows the bridge down.

Packet ids name messages only while in flight, and Mosquitto may have two in flight under one id;
:mod:`vitalchain.ingest.inflight` keeps the deliveries and decides which PUBACK goes out when (each
PUBLISH of a connection acked once, in arrival order per id; none for a lost connection's).

Shards (the default; docs/DECISIONS.md D24, and D6 for why not shared subscriptions): each
device publishes to ``vitals/<shard>/<device_id>`` (:mod:`vitalchain.core.payload.shards`), and
each bridge subscribes
*plainly*, with its own persistent session, to ``vitals/<shard>/+`` for the shards it owns
(``shards``; all of them by default), plus the former unsharded ``vitals/+`` when it owns shard 0
(devices not yet migrated). Mosquitto 2.0.11 restores a persistent session's plain subscriptions
from its persistence file after a restart, so messages published while the broker comes back are
queued for their bridge, not dropped; several bridges split the load without shared
subscriptions. On every connect the bridge subscribes to its filters, then unsubscribes its session
from the shard filters it does not own (a session remembers what an earlier run subscribed to), so
moving a shard to another bridge means: start the new owner, wait until it is subscribed, then
restart the old one without it (the other order drops what is published in between).

Shared subscriptions and broker restarts (measured on Mosquitto 2.0.11, see
``tests/test_bridge_resilience.py``): the broker restores a persistent session and its *plain*
subscriptions from its persistence file, but not its *shared* ones. Messages published after a
Mosquitto restart and before the bridge has reconnected and re-subscribed therefore reach no
subscriber and are dropped by the broker. A ``group`` (``$share/<group>/vitals/#``) is therefore
opt-in only. The bridge re-subscribes on every connect in both modes.

Shared subscription caveat 2 (Mosquitto 2.0): members of ``$share/<group>/...`` with a persistent
session keep getting their round-robin share while offline (queued for them), so a bridge instance
that is retired for good must have its session removed (:func:`forget_session`), or its share
waits until an instance with the same client id comes back. The dynamic-security plugin checks
the whole filter, ``$share/<group>/`` prefix included, so the bridge role grants both
``vitals/#`` and ``$share/+/vitals/#`` (docs/DECISIONS.md D12), which ``tests/test_bridge_*``
exercises on the real broker.

Flood rule (``vitalchain.ingest.ratelimit``, documented for firmware authors in ``docs/DEVICES.md``): each
device has a token bucket of ``flood_burst`` readings refilled at ``flood_rate_per_second``; every
valid reading takes a token. Valid readings that find the bucket empty are not forwarded: they go
to the dead-letter topic as one ``rate_limited`` record per MQTT message (original bytes kept, the
detail lists the readings), counted in ``counters.rate_limited_readings``, and the message is acked
only after that record is in Kafka like any other. One flooding device therefore cannot fill the
raw topic, the windows and storage at the other devices' expense; the bridge still reads every
message (the broker has no per-client rate limit), which ``tests/test_hostile_flood.py`` measures.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from vitalchain.config import Settings
from vitalchain.core.integrity.devicekeys import SignatureError, check_signature
from vitalchain.core.payload.record import (
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_MESSAGES,
    encode_bundle,
    replayed,
)
from vitalchain.core.payload.record import encode as encode_record
from vitalchain.core.payload.shards import LEGACY_FILTER, check_shard_count, shard_filter
from vitalchain.core.payload.validation import Outcome, Rejection, SignedMessage, validate
from vitalchain.core.timeutil import now_us
from vitalchain.devices.keys import Keyring
from vitalchain.devices.mqtt_auth import MqttCredentials, bridge_user
from vitalchain.ingest.deadletter import dead_letter_record
from vitalchain.ingest.inflight import Delivery, InFlight
from vitalchain.ingest.mqttlean import LeanClient
from vitalchain.ingest.ratelimit import DeviceRateLimiter
from vitalchain.ingest.replay import ReplayBuffer

log = logging.getLogger("vitalchain.bridge")

DEFAULT_GROUP = "vitalchain-bridges"
SUBSCRIPTION = LEGACY_FILTER  # the former unsharded topics, read by the owner of shard 0
SHARED_FILTER = "vitals/#"  # inside $share/<group>/: every device topic, sharded or not
SESSION_NEVER_EXPIRES = 0xFFFFFFFF
DRAIN_LIMIT = 512  # events handled before the bundles gathered meanwhile are sent anyway
PARTITIONS_TTL_S = 10.0  # how long the raw topic's partition count is trusted


def client_id(instance: int) -> str:
    """Stable per instance: the persistent session (and what it holds) is found again by it.

    Equal to the instance's MQTT username on purpose: Mosquitto runs with
    ``use_username_as_clientid`` and replaces any client id with the username anyway (D7), so
    only this instance's credentials reach this session. (Same ids as before D7, so sessions
    persisted by an older version are found again.)
    """
    return bridge_user(instance)


@dataclass
class BridgeCounters:
    """Running totals; read from any thread (plain ints, each written by one thread only: the
    bridge's, except ``over_receive_maximum``, written by paho's)."""

    received: int = 0  # MQTT messages taken from Mosquitto (first deliveries and redeliveries)
    forwarded: int = 0  # readings acked by Kafka on the raw topic
    dead_lettered: Counter[str] = field(default_factory=Counter)  # acked DLQ records by reason
    acked: int = 0  # MQTT messages acknowledged to Mosquitto (QoS 0 ones: finished)
    # A redelivery (new connection) of a message still being produced: not produced twice, the
    # earlier delivery is acked on the new connection once its records are in Kafka.
    redelivered_in_flight: int = 0
    # A new message under a packet id whose earlier message is still in flight (Mosquitto numbers
    # a backlog beyond 65,535 ids twice): produced and acked, after the earlier one.
    same_id_in_flight: int = 0
    # Deliveries of a lost connection finished without a PUBACK: Mosquitto redelivers them.
    stale_unacked: int = 0
    # PUBLISHes that came while the bridge held max_inflight: paho's thread waited for room.
    over_receive_maximum: int = 0
    produce_errors: int = 0  # failed sends/deliveries (each retried)
    # Offsets that went backwards on a partition (a broker that lost its log or numbered two
    # batches alike, ingest/replay.py) and the acknowledged records written again for them.
    replays: int = 0
    replayed: int = 0
    rate_limited_readings: int = 0  # valid readings dead-lettered by the flood rule
    # Raw-topic records acked by Kafka (bundles; replays not counted) and the messages they
    # held: their ratio is how many messages a record carries.
    raw_records: int = 0
    raw_messages: int = 0

    def line(self, in_flight: int, waiting_for_order: int = 0, retrying: int = 0,
             stale: int = 0, replaying: int = 0, replay_held: str = "0",
             replay_dropped: int = 0) -> str:
        """The progress line: every count that can hold a reading back is on it (held now:
        ``in_flight``, of which ``waiting_for_order`` and ``stale``; ``retrying`` records)."""
        dlq = sum(self.dead_lettered.values())
        reasons = ",".join(f"{k}={v}" for k, v in sorted(self.dead_lettered.items()))
        return (f"received={self.received} forwarded={self.forwarded} dead_lettered={dlq}"
                f"{f' ({reasons})' if reasons else ''} acked={self.acked} in_flight={in_flight}"
                f" waiting_for_order={waiting_for_order} retrying={retrying} stale={stale}"
                f" redelivered_in_flight={self.redelivered_in_flight}"
                f" same_id_in_flight={self.same_id_in_flight}"
                f" stale_unacked={self.stale_unacked}"
                f" over_receive_maximum={self.over_receive_maximum}"
                f" produce_errors={self.produce_errors}"
                f" replays={self.replays} replayed={self.replayed} replaying={replaying}"
                f" replay_held={replay_held} replay_dropped={replay_dropped}"
                f" rate_limited_readings={self.rate_limited_readings}"
                f" raw_records={self.raw_records} raw_messages={self.raw_messages}")


@dataclass
class _Record:
    token: int  # the delivery it came from (vitalchain.ingest.inflight.Delivery.token)
    topic: str
    key: bytes
    value: bytes
    reason: str | None  # None: the message's readings for the raw topic; else the DLQ reason
    readings: int = 0  # readings a raw-topic record carries
    attempts: int = 0
    # A record Kafka had acknowledged, written again (ingest/replay.py): its MQTT message was
    # acked long ago, so its delivery is not finished again.
    replay: bool = False
    partition: int | None = None  # chosen by the bridge (bundles, replays); None: by the key
    # A bundle: the deliveries of its messages, in order (``token`` is unused then).
    tokens: list[int] | None = None


@dataclass
class _Bundle:
    """Raw-topic records of accepted messages bound for one partition, not yet sent."""

    partition: int
    parts: list[bytes] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    keys: set[bytes] = field(default_factory=set)
    readings: int = 0
    size: int = 0


class Bridge:
    """One bridge instance. ``run()`` blocks until ``stop()``; counters are live on ``counters``."""

    def __init__(self, settings: Settings, *, instance: int = 0, group: str | None = None,
                 shards: list[int] | None = None, max_inflight: int = 1000,
                 clock_us: Callable[[], int] = now_us,
                 retry_backoff: tuple[float, float] = (0.2, 10.0),
                 bundle_messages: int = MAX_BUNDLE_MESSAGES,
                 bundle_bytes: int = MAX_BUNDLE_BYTES) -> None:
        if not 1 <= max_inflight <= 65535:
            raise ValueError("max_inflight must be within 1..65535 (MQTT Receive Maximum)")
        self.settings = settings
        self.instance = instance
        self.group = group
        self.subscriptions, self.released = subscription_plan(settings.mqtt_shards, shards, group)
        self.subscription = " ".join(self.subscriptions)  # for progress lines and logs
        self.max_inflight = max_inflight
        self.clock_us = clock_us
        self.retry_backoff = retry_backoff
        self.counters = BridgeCounters()
        self.limiter = DeviceRateLimiter(settings.flood_rate_per_second, settings.flood_burst)
        self.keyring = Keyring(settings)
        self._arrived_ns: int | None = None  # when the message being validated arrived
        self.require_signature = settings.device_signatures == "required"
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._inflight = InFlight()  # the bridge thread's
        # Which MQTT connection is current: paho's thread bumps it on a disconnect, under the lock
        # the bridge thread holds while it checks a delivery's connection and queues its PUBACK,
        # so no PUBACK of a lost connection's delivery ever goes out on a later connection.
        self._connection = 0
        self._connection_lock = threading.Lock()
        self._arrived = 0  # PUBLISHes handed over by paho's thread (written there only)
        self._room = threading.Condition()  # paho's thread waits here while the bridge is full
        self._retries: list[tuple[float, int, _Record]] = []
        # Several messages in one raw-topic record (docs/STREAM.md "The raw topic's records"):
        # gathered per partition while the event queue has more, sent when it is empty or a
        # bundle is full. ``bundle_messages=1`` writes one record per message, as before.
        self.bundle_messages = max(1, bundle_messages)
        self.bundle_bytes = bundle_bytes
        self._bundles: dict[int, _Bundle] = {}
        self._partitions: tuple[int, float] | None = None  # (count, monotonic when read)
        self._partition_of: dict[bytes, int] = {}  # device key -> partition (for that count)
        self._replay = ReplayBuffer(settings.bridge_replay_seconds)
        self._replaying = 0  # replayed records Kafka has not acknowledged yet
        self._retry_seq = itertools.count()
        self._failures_in_row = 0
        self._client: LeanClient | None = None
        self._producer: KafkaProducer | None = None

    # --- public ----------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Messages held: taken from MQTT, not yet finished (acked, or left for redelivery)."""
        return len(self._inflight)

    @property
    def held(self) -> int:
        """PUBLISHes paho handed over and the bridge has not finished (what ``max_inflight``
        bounds; counts those still queued for the bridge's thread, unlike ``in_flight``)."""
        return self._arrived - self._inflight.released

    def progress_line(self) -> str:
        """The counters plus what is held right now (any thread)."""
        return self.counters.line(len(self._inflight), self._inflight.waiting_for_order,
                                  len(self._retries), self._inflight.stale, self._replaying,
                                  f"{self._replay.held}/{self._replay.held_bytes >> 20}MiB",
                                  self._replay.dropped)

    def stop(self) -> None:
        """Ask ``run()`` to finish: take no more messages, flush, ack, disconnect. Thread-safe."""
        self._stop.set()
        self._events.put(("wake",))

    def run(self, progress: Callable[[BridgeCounters], None] | None = None,
            progress_every: float = 5.0) -> None:
        self._producer = self._connect_producer()
        if self._producer is None:
            return  # stopped before Kafka was ever reachable
        self._client = self._make_client()
        next_progress = time.monotonic() + progress_every
        try:
            self._client.connect_async(self.settings.mqtt_broker_host, self.settings.mqtt_port,
                                       keepalive=30,
                                       clean_start=False, properties=self._connect_properties())
            self._client.loop_start()
            while not self._stop.is_set():
                self._step(timeout=self._next_timeout())
                if progress is not None and time.monotonic() >= next_progress:
                    progress(self.counters)
                    next_progress = time.monotonic() + progress_every
        finally:
            self._shutdown()
            if progress is not None:
                progress(self.counters)

    # --- set-up ----------------------------------------------------------------------
    def _connect_producer(self) -> KafkaProducer | None:
        """Kafka must be reachable before MQTT messages are taken; wait for it, never crash."""
        low, high = self.retry_backoff
        delay = low
        while not self._stop.is_set():
            try:
                return self._make_producer()
            except KafkaError as exc:
                log.warning("Kafka at %s unreachable (%s); not taking MQTT messages yet, "
                            "retrying in %.1fs", self.settings.kafka_bootstrap, exc, delay)
                self._stop.wait(delay)
                delay = min(high, delay * 2)
        return None

    def _make_producer(self) -> KafkaProducer:
        return KafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=client_id(self.instance),
            acks="all",
            # Idempotence off: tansu keeps producer ids in memory, and after a Kafka restart an
            # idempotent kafka-python producer loops on UnknownProducerIdError forever (seen in
            # test_kafka_outage_*). Duplicates are allowed here; the stream dedups.
            enable_idempotence=False,
            linger_ms=5,
            retries=5,
            # send() must not block the bridge for long when Kafka is away: it fails fast and
            # the record is retried with backoff while MQTT keeps the message unacked.
            max_block_ms=2000,
            request_timeout_ms=5000,
            delivery_timeout_ms=10000,
            reconnect_backoff_ms=100,
            reconnect_backoff_max_ms=2000,
            # A rejected (oversized) payload is dead-lettered whole, base64: up to ~1.4x of
            # Mosquitto's message_size_limit (4x max_payload_bytes).
            max_request_size=max(1 << 20, self.settings.max_payload_bytes * 8),
        )

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_NEVER_EXPIRES
        props.ReceiveMaximum = self.max_inflight
        return props

    def _make_client(self) -> LeanClient:
        # paho's client with a lean path for the common PUBLISH (ingest/mqttlean.py, D49);
        # anything else reaches _on_message through paho as before.
        client = LeanClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id(self.instance),
                            protocol=mqtt.MQTTv5, manual_ack=True)
        user = bridge_user(self.instance)
        client.username_pw_set(user, MqttCredentials(self.settings.state_dir).password(user))
        if self.settings.mqtt_tls_ca_file:  # production requires it (vitalchain.production)
            client.tls_set(ca_certs=self.settings.mqtt_tls_ca_file)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_lean_publish = self._on_publish
        return client

    # --- paho thread -----------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("MQTT connect to %s refused: %s (retrying)", self.settings.mqtt_url, reason)
            return
        log.info("connected to %s as %s (session present: %s)", self.settings.mqtt_url,
                 client_id(self.instance), flags.session_present)
        self.connected.set()
        client.subscribe([(f, 1) for f in self.subscriptions])
        if self.released:
            # Filters an earlier run of this session may hold (another shard set, plain vs
            # group): not ours now. Unsubscribing one never held is harmless (UNSUBACK 0x11).
            client.unsubscribe(self.released)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.error("subscription to %s refused: %s", self.subscription, failed[0])
        else:
            self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        with self._connection_lock:
            self._connection += 1
        self.connected.clear()
        self.subscribed.clear()
        if not self._stop.is_set():
            log.warning("MQTT connection lost (%s); reconnecting, unacked messages will be "
                        "redelivered", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._on_publish(message.mid, message.qos, message.topic, bytes(message.payload))

    def _on_publish(self, mid: int, qos: int, topic: str, payload: bytes) -> None:
        """One PUBLISH, from paho's ``on_message`` or the lean path: wait while the bridge is
        full, then hand it to the bridge's thread."""
        self._arrived += 1
        if self._arrived - self._inflight.released > self.max_inflight:
            # The broker sent more than Receive Maximum (Mosquitto 2.0.11 with a backlog, D18):
            # stop reading the socket until Kafka has taken some, so overload slows the bridge
            # down instead of filling its memory. Acks are queued by the bridge's thread meanwhile
            # and go out when this returns.
            self.counters.over_receive_maximum += 1
            assert self._client is not None
            self._wait_for_room(self._client)
        self._events.put(("msg", self._connection, mid, qos, topic, payload, self.clock_us(),
                          time.monotonic_ns()))

    def _full(self, limit: int | None = None) -> bool:
        return self._arrived - self._inflight.released > (limit or self.max_inflight)

    def _wait_for_room(self, client: mqtt.Client) -> None:
        """Block paho's thread (it reads no more) until the bridge holds fewer than max_inflight.

        PUBACKs the bridge's thread queues meanwhile are written from here: they free the broker's
        in-flight slots and show it the bridge is alive (it drops a client it hears nothing from
        for 1.5x the keep-alive)."""
        started = time.monotonic()
        # Resume a little below the limit: one wake-up per tenth of it, not one per message.
        resume = self.max_inflight - max(1, self.max_inflight // 10) + 1
        while self._full(resume) and not self._stop.is_set():
            with self._room:
                if self._full(resume):
                    self._room.wait(0.5)
            client.loop_write()
        waited = time.monotonic() - started
        if waited > 10:
            log.warning("waited %.1fs for room (%d messages held; Kafka slow?)", waited,
                        self._arrived - self._inflight.released - 1)

    # --- bridge thread ---------------------------------------------------------------
    def _next_timeout(self) -> float:
        if self._retries:
            return max(0.0, min(0.5, self._retries[0][0] - time.monotonic()))
        return 0.5

    def _step(self, timeout: float) -> None:
        """Handle every queued event, then send the bundles gathered meanwhile: under light load
        a bundle holds one message (no added delay), under load as many as were queued."""
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            event = None
        handled = 0
        while event is not None:
            self._handle(event)
            handled += 1
            if handled >= DRAIN_LIMIT:
                # A queue that never empties must not hold a half-full bundle back for long.
                self._flush_bundles()
                handled = 0
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                event = None
        self._flush_bundles()
        self._run_due_retries()

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "msg":
            if not self._stop.is_set():
                self._accept(*event[1:])
        elif kind == "ok":
            self._delivered(event[1], event[2])
        elif kind == "err":
            self._failed(event[1], event[2])

    def _accept(self, connection: int, mid: int, qos: int, topic: str, payload: bytes,
                received_us: int, arrived_ns: int | None = None) -> None:
        self.counters.received += 1
        self._arrived_ns = arrived_ns
        delivery, kind = self._inflight.arrive(connection, mid, qos, topic, payload)
        if kind == "adopted":
            # Mosquitto resent (after a reconnect) a message we are still producing: that
            # delivery is acked on this connection once its records are in Kafka.
            self.counters.redelivered_in_flight += 1
            self._notify_room()
            return
        if kind == "same_id":
            self.counters.same_id_in_flight += 1
        outcome = validate(topic, payload, received_us,
                           max_payload_bytes=self.settings.max_payload_bytes,
                           max_future_seconds=self.settings.max_future_seconds,
                           signatures=self._check_signature,
                           require_signature=self.require_signature)
        self._apply_flood_rule(outcome, received_us)
        token = delivery.token
        records: list[_Record] = []
        key = outcome.device_id.encode() if outcome.device_id else b""
        for rejection in outcome.rejections:
            dlq_topic, dlq_key, value = dead_letter_record(
                self.settings.dlq_topic, outcome.device_id, rejection, topic, payload, received_us)
            records.append(_Record(token, dlq_topic, dlq_key, value, rejection.reason))
            log.debug("rejected %s: %s %s", topic, rejection.reason, rejection.detail)
        # The message's readings are one record (version 2), counted as one record of its
        # delivery whether it travels alone or in a bundle.
        self._finish(self._inflight.expect(delivery, len(records) + bool(outcome.readings)))
        if outcome.readings:
            value = encode_record(outcome.readings, received_us, _signed_part(outcome))
            self._gather(token, key, value, len(outcome.readings))
        for record in records:
            self._send(record)

    # --- bundles (bridge thread) ---------------------------------------------------------
    def _gather(self, token: int, key: bytes, value: bytes, readings: int) -> None:
        """Put a message's raw-topic record into the bundle of its device's partition (sent by
        ``_step`` when the queue is empty, or here when the bundle is full)."""
        partition = self._partition(key)
        if partition is None:  # partition count unknown: alone, partitioned by its key
            self._send(_Record(token, self.settings.raw_topic, key, value, None, readings))
            return
        bundle = self._bundles.get(partition)
        if bundle is not None and (len(bundle.parts) >= self.bundle_messages
                                   or bundle.size + len(value) + 1 > self.bundle_bytes):
            self._send_bundle(self._bundles.pop(partition))
            bundle = None
        if bundle is None:
            bundle = self._bundles[partition] = _Bundle(partition)
        bundle.parts.append(value)
        bundle.tokens.append(token)
        bundle.keys.add(key)
        bundle.readings += readings
        bundle.size += len(value) + 1

    def _flush_bundles(self) -> None:
        if self._bundles:
            bundles, self._bundles = self._bundles, {}
            for bundle in bundles.values():
                self._send_bundle(bundle)

    def _send_bundle(self, bundle: _Bundle) -> None:
        # The key says whose messages these are when they are one device's (always so for a
        # bundle of one: byte-identical to a record of before); the partition is explicit.
        key = next(iter(bundle.keys)) if len(bundle.keys) == 1 else b""
        self._send(_Record(bundle.tokens[0], self.settings.raw_topic, key,
                           encode_bundle(bundle.parts), None, bundle.readings,
                           partition=bundle.partition, tokens=bundle.tokens))

    def _partition(self, key: bytes) -> int | None:
        """The raw-topic partition Kafka's default partitioner gives ``key`` (murmur2, as
        kafka-python and the Java client): a device's messages stay in one partition, in
        order, bundled or not. The partition count is read again every PARTITIONS_TTL_S."""
        now = time.monotonic()
        if self._partitions is None or now - self._partitions[1] > PARTITIONS_TTL_S:
            assert self._producer is not None
            try:
                count = len(self._producer.partitions_for(self.settings.raw_topic) or ())
            except KafkaError as exc:
                log.debug("raw topic's partitions unknown (%s): sending unbundled", exc)
                count = 0
            if self._partitions is None or count != self._partitions[0]:
                self._partition_of.clear()
            self._partitions = (count, now)
        count = self._partitions[0]
        if count <= 0 or not key:
            return None
        found = self._partition_of.get(key)
        if found is None:
            found = self._partition_of[key] = (murmur2(key) & 0x7FFFFFFF) % count
        return found

    def _check_signature(self, device_id: str, key_id: str, sig: Any,
                         readings: list[Any]) -> str | None:
        """The device's signature over the message (validate's ``signatures`` hook)."""
        try:
            key = self.keyring.lookup(device_id, key_id, self._arrived_ns)
            # The signed bytes validate() wrote from the checked readings, when it could.
            check_signature(key, key_id, sig, readings, getattr(readings, "signed_bytes", None))
        except SignatureError as exc:
            return str(exc)
        return None

    def _apply_flood_rule(self, outcome: Outcome, received_us: int) -> None:
        """Keep the readings the device's bucket pays for; the rest become one rejection."""
        if not outcome.readings or outcome.device_id is None:
            return
        wanted = len(outcome.readings)
        granted = self.limiter.take(outcome.device_id, wanted, received_us)
        if granted == wanted:
            return
        over = outcome.reading_indexes[granted:]
        del outcome.readings[granted:]
        del outcome.reading_indexes[granted:]
        self.counters.rate_limited_readings += len(over)
        s = self.settings
        outcome.rejections.append(Rejection(
            "rate_limited",
            f"device over {s.flood_rate_per_second:g} readings/s (burst {s.flood_burst}): "
            f"{len(over)} reading(s) not forwarded, indexes {over}", over[0]))

    def _send(self, record: _Record) -> None:
        record.attempts += 1
        assert self._producer is not None
        try:
            future = self._producer.send(record.topic, key=record.key, value=record.value,
                                         partition=record.partition)
        except KafkaError as exc:
            self._failed(record, exc)
            return
        future.add_callback(lambda meta, r=record: self._events.put(("ok", r, meta)))
        future.add_errback(lambda exc, r=record: self._events.put(("err", r, exc)))

    def _delivered(self, record: _Record, meta: Any) -> None:
        self._failures_in_row = 0
        if record.reason is None:
            self._check_offsets(record, meta)
        if record.replay:
            self._replaying -= 1
            return
        if record.reason is None:
            self.counters.forwarded += record.readings
            self.counters.raw_records += 1
            self.counters.raw_messages += 1 if record.tokens is None else len(record.tokens)
        else:
            self.counters.dead_lettered[record.reason] += 1
        if record.tokens is None:
            self._finish(self._inflight.record_done(record.token))
        else:
            finished: list[Delivery] = []
            for token in record.tokens:
                finished += self._inflight.record_done(token)
            self._finish(finished)

    def _check_offsets(self, record: _Record, meta: Any) -> None:
        """Write again what Kafka acknowledged lately on a partition whose offsets went back."""
        replay = self._replay.acked(meta.partition, meta.offset, record.key, record.value,
                                    time.monotonic())
        if replay is None:
            return
        self.counters.replayed += len(replay.records)
        self._replaying += len(replay.records)
        if not replay.whole:
            log.debug("partition %d: offset %d was used by the numbering before (up to %d): "
                      "writing that record again", replay.partition, replay.offset, replay.high)
        else:
            self.counters.replays += 1
            log.warning("partition %d: Kafka acknowledged offset %d, at or below offset %d it "
                        "had acknowledged before (the broker lost its log or numbered two "
                        "batches alike): writing the %d records acknowledged there in the last "
                        "%.0fs again, and for %.0fs each one given an offset up to %d; the "
                        "stream drops what it already sealed", replay.partition, replay.offset,
                        replay.high, len(replay.records), self._replay.horizon_s,
                        self._replay.zone_s, replay.high)
        at = self.clock_us()
        for key, value in replay.records:
            # To the partition it was acknowledged on: a bundle's key need not name it.
            self._send(_Record(-1, self.settings.raw_topic, key, replayed(value, at), None,
                               replay=True, partition=replay.partition))

    def _finish(self, deliveries: list[Delivery]) -> None:
        """PUBACK finished deliveries (in the order given) on the connection they came on; one of
        a connection since lost gets none: Mosquitto redelivers it (a duplicate, not a loss)."""
        if not deliveries:
            return
        acking = [d for d in deliveries if d.qos != 0]
        current: list[Delivery] = []
        if acking:
            assert self._client is not None
            with self._connection_lock:
                current = [d for d in acking if d.connection == self._connection]
                # QoS 1 (what the bridge subscribes with): one write for all of them (D49).
                self._client.ack_many([d.mid for d in current if d.qos == 1])
                for delivery in current:
                    if delivery.qos != 1:
                        self._client.ack(delivery.mid, delivery.qos)
        self.counters.acked += len(deliveries) - len(acking) + len(current)
        self.counters.stale_unacked += len(acking) - len(current)
        self._notify_room()

    def _notify_room(self) -> None:
        with self._room:
            self._room.notify_all()

    def _failed(self, record: _Record, exc: BaseException) -> None:
        self.counters.produce_errors += 1
        self._failures_in_row += 1
        if self._stop.is_set():
            return  # left unacked: Mosquitto redelivers it to this session later
        low, high = self.retry_backoff
        delay = min(high, low * 2 ** min(self._failures_in_row - 1, 16))
        log.warning("Kafka did not take a record for %s (attempt %d: %s: %s); message stays "
                    "unacked in MQTT, retrying in %.1fs", record.topic, record.attempts,
                    type(exc).__name__, exc, delay)
        heapq.heappush(self._retries, (time.monotonic() + delay, next(self._retry_seq), record))

    def _run_due_retries(self) -> None:
        now = time.monotonic()
        while self._retries and self._retries[0][0] <= now and not self._stop.is_set():
            _, _, record = heapq.heappop(self._retries)
            self._send(record)

    def _shutdown(self, flush_timeout: float = 10.0) -> None:
        """Stop taking messages, flush Kafka, ack what Kafka took, then disconnect."""
        self._stop.set()
        self._notify_room()  # paho's thread may wait for room: let it see the stop
        client, producer = self._client, self._producer
        if producer is not None:
            self._flush_bundles()
            try:
                producer.flush(timeout=flush_timeout)
            except KafkaError as exc:
                log.warning("Kafka flush incomplete at stop (%s); unacked messages will be "
                            "redelivered", exc)
            while True:
                try:
                    self._handle(self._events.get_nowait())
                except queue.Empty:
                    break
        if client is not None:
            client.disconnect()
            client.loop_stop()
        if producer is not None:
            producer.close(timeout=flush_timeout)
        log.info("bridge stopped: %s", self.progress_line())


def subscription_plan(shard_count: int, shards: list[int] | None, group: str | None
                      ) -> tuple[list[str], list[str]]:
    """(filters to subscribe, filters to drop from the session) for these shards or this group.

    ``shards=None``: every shard. The owner of shard 0 also reads the former unsharded topics. A
    group reads every device topic through ``$share/<group>/vitals/#`` (not restored by
    Mosquitto 2.0.11 after a restart: opt-in, D6) and holds no plain filter."""
    check_shard_count(shard_count)
    every = [shard_filter(s) for s in range(shard_count)] + [LEGACY_FILTER]
    if group is not None:
        if shards is not None:
            raise ValueError("a shared-subscription group reads every shard; give shards or a "
                             "group, not both")
        return [f"$share/{group}/{SHARED_FILTER}"], every
    owned = list(range(shard_count)) if shards is None else sorted(set(shards))
    if not owned or any(not 0 <= s < shard_count for s in owned):
        raise ValueError(f"shards {owned} must be a non-empty subset of 0..{shard_count - 1} "
                         f"(VITALCHAIN_MQTT_SHARDS={shard_count})")
    mine = [shard_filter(s) for s in owned] + ([LEGACY_FILTER] if 0 in owned else [])
    return mine, [f for f in every if f not in mine]


def _signed_part(outcome: Outcome) -> dict[str, Any] | None:
    """The signed message a record carries (docs/STREAM.md, "Device signatures"): named by
    ``at`` = ``[ts_us, seq]`` of its first forwarded reading, with the key id, the signature and
    every reading as sent, so a proof can check the device's signature again."""
    signed: SignedMessage | None = outcome.signed
    if signed is None:
        return None
    first = outcome.readings[0]
    return {"at": [first["ts_us"], first["seq"]], "key_id": signed.key_id, "sig": signed.sig,
            "readings": signed.readings}


def _raw_value(reading: dict[str, Any], received_us: int,
               signed: dict[str, Any] | None = None) -> bytes:
    """A raw-topic value of one reading (the record format's, version 2)."""
    return encode_record([reading], received_us, signed)


def forget_session(settings: Settings, instance: int, timeout: float = 10.0) -> None:
    """Remove a retired instance's persistent session (and the messages queued for it)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id(instance),
                         protocol=mqtt.MQTTv5)
    user = bridge_user(instance)
    client.username_pw_set(user, MqttCredentials(settings.state_dir).password(user))
    done = threading.Event()
    client.on_connect = lambda *args: done.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    client.connect(settings.host, settings.mqtt_port, clean_start=True, properties=props)
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise TimeoutError(f"no CONNACK from {settings.mqtt_url} within {timeout}s")
    finally:
        client.disconnect()
        client.loop_stop()
