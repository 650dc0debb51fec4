"""Many simulated wearables in one process, all on one asyncio loop.

Each device is one coroutine (its MQTT link) and one socket; one task samples them all
(``devices/sampler.py``), so thousands fit in a process: the only hard limit is file descriptors,
which ``run_fleet`` raises to the hard limit.
Devices start spread over the first second (or sampling interval) so a fleet does not hit the
broker with one burst of CONNECTs and one of PUBLISHes every tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vitalchain.config import Settings
from vitalchain.core.gcpace import gen0_raised
from vitalchain.devices.firmware import Device, DeviceConfig, Tally
from vitalchain.devices.physiology import Deterioration
from vitalchain.devices.registry import DeviceIdentity, identities
from vitalchain.devices.sampler import sample_fleet
from vitalchain.devices.seqstore import DEFAULT_BLOCK, SeqCounter, close_all, renew_all


@dataclass
class FleetStats:
    """Counters in readings (``messages`` counts MQTT messages)."""

    devices: int = 0
    generated: int = 0
    published: int = 0  # readings sent in PUBLISH packets, resends included
    acked: int = 0  # readings whose message got a successful PUBACK
    buffered: int = 0  # readings held now, not yet acknowledged
    dropped: int = 0  # readings discarded because a device's buffer was full (oldest first)
    rejected: int = 0  # readings whose PUBACK carried a failure reason code
    messages: int = 0
    connect_attempts: int = 0  # TCP + MQTT CONNECT attempts, failed ones included
    connected: int = 0  # devices connected right now
    elapsed_s: float = 0.0
    acked_ids: set[tuple[str, int]] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)  # last error of devices not connected

    @property
    def ack_rate(self) -> float:
        return self.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        return (f"{self.elapsed_s:7.1f}s  devices {self.connected}/{self.devices} connected  "
                f"published {self.published}  acknowledged {self.acked}  buffered {self.buffered}  "
                f"dropped {self.dropped}" + (f"  rejected {self.rejected}" if self.rejected else ""))


ProgressCallback = Callable[[FleetStats], None]


# Devices of one fleet in the TCP + CONNECT handshake at once. Without a bound 5,000 devices all
# connected within the first second: in a profile none was connected for the first 20 s and the
# last only after 68 s (SYNs and CONNACKs lost in the broker's queues, 10 s timeouts, retries);
# with it they all connected once each within 20 s (docs/PERFORMANCE.md, last section).
MAX_CONNECTING = 64


def raise_nofile_limit() -> int:
    """Lift the soft descriptor limit to the hard one (one socket per device); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


class Fleet:
    def __init__(self, devices: list[Device], stats: FleetStats, tally: Tally | None = None) -> None:
        self.devices = devices
        self.stats = stats
        # The devices' totals as they change; without one (devices built elsewhere) a pass sums them.
        self.tally = tally
        self.started = time.monotonic()

    def snapshot(self) -> FleetStats:
        """The fleet's counters now: the totals from the fleet's :class:`Tally`, and one pass
        over the devices for who is connected and the last error of those that are not (each
        interval; the pass once also summed every counter, a cost per device that grew with the
        fleet: docs/PERFORMANCE.md, "sim4")."""
        tally = self.tally
        if tally is None:
            tally = Tally()
            for d in self.devices:
                tally.generated += d.generated
                tally.published += d.published
                tally.acked += d.acked
                tally.dropped += d.dropped
                tally.rejected += d.rejected
                tally.messages += d.messages
                tally.connect_attempts += d.connect_attempts
        connected = 0
        errors: dict[str, str] = {}
        for d in self.devices:
            link = d.link
            if link is not None and not link.closed.done():  # Device.connected, inline
                connected += 1
            elif d.last_error:
                errors[d.identity.device_id] = d.last_error
        s = self.stats
        s.devices = len(self.devices)
        s.generated, s.published, s.acked = tally.generated, tally.published, tally.acked
        s.buffered, s.dropped, s.rejected = tally.buffered, tally.dropped, tally.rejected
        s.messages, s.connect_attempts, s.connected = tally.messages, tally.connect_attempts, connected
        s.elapsed_s = time.monotonic() - self.started
        s.errors = errors
        return s


async def run_fleet(settings: Settings, device_ids: Sequence[str | DeviceIdentity], rate: float,
                    duration: float | None = None, count: int | None = None, batch: int = 1,
                    seed: int = 0, on_progress: ProgressCallback | None = None, *,
                    buffer_limit: int = 10_000, max_inflight: int = 10,
                    progress_interval: float = 1.0, drain_timeout: float = 30.0,
                    track_acked: bool = True, episodes_per_hour: float = 1.0,
                    keepalive: int = 30,
                    stop: asyncio.Event | None = None,
                    scripts: dict[str, Deterioration] | None = None) -> FleetStats:
    """Run provisioned devices until each took ``count`` readings or ``duration`` seconds passed
    (or ``stop`` is set), then give them up to ``drain_timeout`` s to empty their buffers.

    ``on_progress`` gets the live ``FleetStats`` every ``progress_interval`` s and once at the end.
    With neither ``count`` nor ``duration`` the fleet runs until ``stop`` is set.
    ``scripts`` gives patients (by id) a scripted deterioration; the others are untouched.
    """
    if count is not None and count < 0:
        raise ValueError("count must not be negative")
    if duration is not None and duration < 0:
        raise ValueError("duration must not be negative")
    if count is None and duration is None and stop is None:
        raise ValueError("give count, duration or a stop event, or the fleet never ends")
    if not device_ids:
        raise ValueError("no devices to run")
    raise_nofile_limit()
    named = [d for d in device_ids if isinstance(d, str)]
    looked_up = {i.device_id: i for i in identities(settings, named)} if named else {}
    people = [d if isinstance(d, DeviceIdentity) else looked_up[d] for d in device_ids]
    twice = sorted(d for d, n in Counter(p.device_id for p in people).items() if n > 1)
    if twice:
        raise ValueError(f"devices listed twice (they would keep kicking each other off): {twice}")

    # The collector at a fleet's pace while it runs (vitalchain/core/gcpace.py, D48).
    with gen0_raised():
        stats = FleetStats()

        def on_ack(device_id: str, seqs: list[int]) -> None:
            stats.acked_ids.update((device_id, s) for s in seqs)

        config = DeviceConfig(settings.host, settings.mqtt_port, rate=rate, batch=batch,
                              buffer_limit=buffer_limit, max_inflight=max_inflight,
                              episodes_per_hour=episodes_per_hour, seed=seed, keepalive=keepalive,
                              scripts=dict(scripts or {}))
        config.check()
        # A block of about a minute's readings (at least the default): fewer fsyncs, a gap after a crash
        # of at most that minute (gaps are allowed, docs/DEVICES.md).
        block = max(DEFAULT_BLOCK, int(rate * 60))
        counters = [SeqCounter.for_device(settings, p.device_id, block) for p in people]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, renew_all, counters)  # one sync for the fleet
        gate = asyncio.Semaphore(MAX_CONNECTING)
        tally = Tally()
        devices = [Device(p, config, c, on_ack if track_acked else None, connect_gate=gate,
                          tally=tally)
                   for p, c in zip(people, counters, strict=True)]
        fleet = Fleet(devices, stats, tally)
        spread = min(1.0, 1.0 / rate)
        start = loop.time() + 0.01
        links = [asyncio.create_task(d.run_link(first_delay=spread * i / len(devices)))
                 for i, d in enumerate(devices)]
        sampling = asyncio.ensure_future(sample_fleet(devices, rate, count, duration, start))
        reporter = asyncio.create_task(_report(fleet, on_progress, progress_interval,
                                               tick_interval(config.keepalive)))
        stop_wait = asyncio.ensure_future((stop or asyncio.Event()).wait())
        try:
            await asyncio.wait((sampling, stop_wait), return_when=asyncio.FIRST_COMPLETED)
            if not sampling.done():
                sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling  # surfaces a sampling error (a corrupt seq file, say)
            _, pending = await asyncio.wait(links, timeout=drain_timeout)
            for device in devices:
                device.stop()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
            for task in links:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            stop_wait.cancel()
            sampling.cancel()
            reporter.cancel()
            for task in links:
                task.cancel()
            await asyncio.gather(*links, reporter, return_exceptions=True)
            for device in devices:
                if device.link is not None:
                    device.link.abort()
            await loop.run_in_executor(None, close_all, counters)
        final = fleet.snapshot()
        if on_progress is not None:
            on_progress(final)
        return final


def tick_interval(keepalive: float) -> float:
    """How often every link's keepalive bookkeeping (paho's ``loop_misc``) runs.

    It was once a second for every device: 5,000 calls a second for 5,000 devices, whatever they
    send. paho sends a PINGREQ once ``keepalive`` s passed without a packet, so a tick every
    ``keepalive / 6`` s (5 s at the default 30 s, never more often than 1 s) sends it at most
    ``keepalive * 7 / 6`` s after the last packet, well inside the ``1.5 * keepalive`` after which
    the broker drops a silent client (MQTT 5, 3.1.2.10).
    """
    return max(1.0, min(5.0, keepalive / 6))


async def _report(fleet: Fleet, on_progress: ProgressCallback | None, interval: float,
                  tick_s: float = 1.0) -> None:
    """Progress callbacks, plus the keepalive bookkeeping of every link every ``tick_s``."""
    loop = asyncio.get_running_loop()
    next_tick = next_report = loop.time()
    while True:
        now = loop.time()
        if now >= next_tick:
            for device in fleet.devices:
                device.tick()
            next_tick = now + tick_s
        if now >= next_report:
            if on_progress is not None:
                on_progress(fleet.snapshot())
            next_report = now + interval
        await asyncio.sleep(max(0.01, min(next_tick, next_report) - loop.time()))
