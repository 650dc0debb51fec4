"""The behaviour of one wearable: sample, buffer, publish, forget only what the broker acknowledged.

A reading leaves the device's memory only on PUBACK. Until then it sits in a bounded buffer: new
readings are appended, the oldest are dropped (and counted) when the bound is hit, and whatever was
in flight when the link went down goes back to the front, in seq order, to be sent again after the
reconnect. That makes delivery at-least-once: a reading whose PUBACK was lost is sent twice with
the same ``(device_id, seq)``, which is exactly what the pipeline deduplicates on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vitalchain.core.payload.limits import MAX_BATCH, MIN_BATCH
from vitalchain.devices.keys import SigningKey
from vitalchain.devices.physiology import Deterioration, Patient
from vitalchain.devices.registry import DeviceIdentity
from vitalchain.devices.seqstore import SeqCounter
from vitalchain.devices.transport import ConnectRefused, LinkDown, MqttLink, PublishRejected
from vitalchain.devices.wire import MessageWriter, generic_encode

Reading = dict[str, Any]
AckSink = Callable[[str, list[int]], None]


def encode(readings: list[Reading], signing: SigningKey | None = None) -> bytes:
    """The MQTT payload; compact JSON, UTF-8.

    Signed (the device has a key): ``{"key_id", "sig", "readings": [...]}``, one Ed25519
    signature per message over ``JCS({"key_id", "readings"})`` (docs/DEVICES.md), so the cost is
    per message, not per reading. Unsigned (a legacy device): one reading as itself, several as
    ``{"readings": [...]}``. A running device writes the same bytes with its own
    :class:`~vitalchain.devices.wire.MessageWriter` (templates instead of generic encoders).
    """
    return generic_encode(readings, signing)


@dataclass
class DeviceConfig:
    host: str
    port: int
    rate: float = 1.0  # readings per second
    batch: int = 1  # readings per message
    buffer_limit: int = 10_000  # readings kept while unacknowledged
    max_inflight: int = 10  # messages awaiting PUBACK at once
    keepalive: int = 30
    episodes_per_hour: float = 1.0
    seed: int = 0
    # patient id -> scripted deterioration (the demo's patient who goes amber, then red)
    scripts: dict[str, Deterioration] = field(default_factory=dict)

    def check(self) -> None:
        if not self.rate > 0:
            raise ValueError("rate must be positive (readings per second per device)")
        if not MIN_BATCH <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch must be within {MIN_BATCH}..{MAX_BATCH}")
        if self.buffer_limit < self.batch:
            raise ValueError("buffer_limit must hold at least one batch")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")


class Tally:
    """Counters summed over a fleet's devices as they change (readings unless named otherwise).

    The fleet's progress line was a pass over every device's counters each interval: at 5,000
    devices 5-6 ms a time, a cost per device whatever the rate (docs/PERFORMANCE.md, "sim4").
    Each device adds to the fleet's tally where it adds to its own counters, so the totals are
    read at once; what is held is ``generated - acked - dropped - rejected`` (a reading leaves a
    device's buffer only by one of those three, see :attr:`Device.buffered`).
    """

    __slots__ = (
        "acked",
        "connect_attempts",
        "dropped",
        "generated",
        "messages",
        "published",
        "rejected",
    )

    def __init__(self) -> None:
        self.generated = self.published = self.acked = self.dropped = self.rejected = 0
        self.messages = self.connect_attempts = 0

    @property
    def buffered(self) -> int:
        return self.generated - self.acked - self.dropped - self.rejected


class Device:
    def __init__(self, identity: DeviceIdentity, config: DeviceConfig, seq: SeqCounter,
                 on_ack: AckSink | None = None, clock: Callable[[], float] = time.time,
                 connect_gate: asyncio.Semaphore | None = None, tally: Tally | None = None) -> None:
        config.check()
        # Shared by a fleet: at most so many of its devices in the TCP + CONNECT handshake at once.
        self.connect_gate = connect_gate
        self.identity = identity
        self.config = config
        self.seq = seq
        self.on_ack = on_ack
        self.clock = clock
        self.patient = Patient(identity.patient_id, config.seed, config.episodes_per_hour,
                               config.scripts.get(identity.patient_id))
        self._rng = random.Random(f"vitalchain-device/{config.seed}/{identity.device_id}")
        self.writer = MessageWriter(identity.device_id, identity.patient_id, identity.signing)
        self.queue: deque[Reading] = deque()
        self.inflight: dict[asyncio.Future[None], list[Reading]] = {}
        self.link: MqttLink | None = None
        self.generating = True
        self.last_error = ""
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        # counters (readings unless named otherwise), each also added to the fleet's tally
        self.tally = tally if tally is not None else Tally()
        self.generated = self.published = self.acked = self.dropped = self.rejected = 0
        self.messages = self.connects = self.connect_attempts = 0

    # --- state ---------------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Readings held because the broker has not acknowledged them yet: always
        ``generated - acked - dropped - rejected`` (what the fleet's :class:`Tally` reports)."""
        return len(self.queue) + sum(len(r) for r in self.inflight.values())

    @property
    def connected(self) -> bool:
        return self.link is not None and not self.link.closed.done()

    @property
    def drained(self) -> bool:
        return not self.generating and not self.queue and not self.inflight

    # --- sampling ------------------------------------------------------------------------
    def sample(self) -> Reading:
        """Take one reading now and put it in the buffer."""
        reading = {"device_id": self.identity.device_id, "patient_id": self.identity.patient_id,
                   "seq": self.seq.take(), "ts_us": int(self.clock() * 1_000_000),
                   "vitals": self.patient.sample(1.0 / self.config.rate)}
        if self.seq.wants_renewal():  # reserve the next block off the event loop
            asyncio.get_running_loop().run_in_executor(None, self.seq.renew)
        self.generated += 1
        self.tally.generated += 1
        queue = self.queue
        queue.append(reading)
        # Exact without summing the in-flight lists: they hold at most max_inflight x batch.
        cfg = self.config
        if len(queue) + cfg.max_inflight * cfg.batch > cfg.buffer_limit:
            self._trim()
        # The sender has nothing to do for a part batch, nor with every window slot taken (a
        # PUBACK wakes it then): under backpressure it is not woken for every reading either.
        if len(queue) >= cfg.batch and len(self.inflight) < cfg.max_inflight:
            self._wake.set()
        return reading

    def _trim(self) -> None:
        while self.queue and self.buffered > self.config.buffer_limit:
            self.queue.popleft()
            self.dropped += 1
            self.tally.dropped += 1

    def sampling_offset(self) -> float:
        """Where in its interval this device samples (from its own seeded generator): devices
        spread over the interval instead of sampling in step."""
        interval = 1.0 / self.config.rate
        return self._rng.random() * min(interval, 1.0)

    def done_generating(self) -> None:
        """No more samples: the sender flushes the part batch it holds, then drains."""
        self.generating = False
        self._wake.set()

    async def generate(self, count: int | None, duration: float | None, start: float) -> None:
        """Sample at ``rate`` from loop time ``start`` until ``count`` or ``duration`` is reached."""
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.config.rate
        offset = self.sampling_offset()
        k = 0
        try:
            while count is None or k < count:
                due = start + offset + k * interval
                if duration is not None and due - start >= duration:
                    break
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.sample()
                k += 1
        finally:
            self.done_generating()

    # --- sending -------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask ``run_link`` to disconnect now, whatever is still buffered."""
        self._stop.set()
        self._wake.set()

    async def run_link(self, first_delay: float = 0.0) -> None:
        """Keep a connection up and the buffer flowing until drained or stopped."""
        stop = self._stop
        backoff = 0.1
        if first_delay > 0:
            await _sleep_unless(stop, first_delay)
        while not stop.is_set() and not self.drained:
            cfg = self.config
            link = MqttLink(cfg.host, cfg.port, self.identity.device_id, self.identity.username,
                            self.identity.password, cfg.keepalive)
            self.connect_attempts += 1
            self.tally.connect_attempts += 1
            try:
                if self.connect_gate is None:
                    await link.connect()
                else:
                    async with self.connect_gate:
                        await link.connect()
            except LinkDown as exc:
                self.last_error = str(exc)
                if isinstance(exc, ConnectRefused):
                    backoff = max(backoff, 1.0)  # credentials do not fix themselves quickly
                await _sleep_unless(stop, backoff * (0.5 + self._rng.random()))
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            self.connects += 1
            self.link = link
            link.closed.add_done_callback(lambda _f: self._wake.set())
            try:
                await self._pump(link)
            except LinkDown as exc:
                self.last_error = str(exc)
            finally:
                self._recover_inflight()
                self.link = None
            if self.drained or stop.is_set():
                await link.close()
            else:
                link.abort()

    async def _pump(self, link: MqttLink) -> None:
        batch = self.config.batch
        topic = self.identity.topic
        tally = self.tally
        while not self._stop.is_set():
            self._wake.clear()
            if link.closed.done():
                raise LinkDown("connection lost")
            while (self.queue and len(self.inflight) < self.config.max_inflight
                   and (len(self.queue) >= batch or not self.generating)):
                readings = [self.queue.popleft() for _ in range(min(batch, len(self.queue)))]
                try:
                    future = link.publish(topic, self.writer.write(readings))
                except LinkDown:
                    self.queue.extendleft(reversed(readings))
                    raise
                self.inflight[future] = readings
                self.published += len(readings)
                self.messages += 1
                tally.published += len(readings)
                tally.messages += 1
                future.add_done_callback(self._settled)
            if self.drained:
                return
            await self._wake.wait()

    def _settled(self, future: asyncio.Future[None]) -> None:
        readings = self.inflight.pop(future, None)
        self._wake.set()
        if readings is None:
            return
        error = future.exception() if not future.cancelled() else LinkDown("cancelled")
        if error is None:
            self.acked += len(readings)
            self.tally.acked += len(readings)
            if self.on_ack is not None:
                self.on_ack(self.identity.device_id, [r["seq"] for r in readings])
        elif isinstance(error, PublishRejected):
            self.rejected += len(readings)
            self.tally.rejected += len(readings)
            self.last_error = str(error)
        else:
            self.inflight[future] = readings  # put back: _recover_inflight requeues it

    def _recover_inflight(self) -> None:
        """After the link dropped: acked ones count, the rest go back to the front in seq order."""
        unacked: list[Reading] = []
        for future, readings in list(self.inflight.items()):
            if future.done() and not future.cancelled() and future.exception() is None:
                self._settled(future)
            else:
                unacked += readings
        self.inflight.clear()
        unacked.sort(key=lambda r: r["seq"])
        self.queue.extendleft(reversed(unacked))
        self._trim()

    def tick(self) -> None:
        link = self.link
        if link is not None:
            link.tick()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
