"""The whole chain on the real services: devices → Mosquitto → bridge → Kafka → stream → InfluxDB +
ledger, with the bridge and the stream worker as the same subprocesses an operator runs.

What "exactly once, provably" means here, checked from the outside after the run:

- every reading Mosquitto acknowledged to a device is in InfluxDB exactly once (one point per
  ``(device_id, seq)``), and in exactly one sealed window of the ledger, at the slot whose leaf the
  ledger holds;
- every sealed window's root is recomputed from what InfluxDB holds (canonical readings rebuilt by
  ``vitalchain.storage.readings``, leaves rehashed), so the stored data and the log agree byte for byte;
- window sizes add up to the readings stored: no reading sits in two windows, no slot is empty.

The second test SIGKILLs the bridge and restarts Mosquitto mid-run on a private stack, and still
demands all of the above: nothing acknowledged may be lost, duplicates may not show.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.common_support import wait_until
from vitalchain.app.pipeline import Pipeline, wait_bridges
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import Settings
from vitalchain.core.integrity import (
    WINDOW_FORMAT,
    derive_salt,
    reading_leaf_hash,
    root,
)
from vitalchain.devices.fleet import FleetStats, run_fleet
from vitalchain.devices.registry import DeviceIdentity, provision_devices
from vitalchain.ingest.bridge import forget_session
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.readings import StoredReading, reading_from_row, reading_point
from vitalchain.storage.saltkey import load_or_create_salt_key

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

DEVICES = 10
RATE_HZ = 2.0
SECONDS = 10.0
# Small windows so a 10 s run seals several per partition, and quiet partitions seal quickly.
WINDOW_OVERRIDES: dict[str, Any] = {"window_seconds": 2.0, "idle_seal_seconds": 1.0}


# --- InfluxDB and ledger reads -------------------------------------------------------------------
def influx_rows(settings: Settings, query: str, params: dict[str, Any] | None = None) -> list[dict]:
    async def go() -> list[dict]:
        async with InfluxClient(settings) as client:
            return await client.query(query, params)

    return asyncio.run(go())


def stored_count(settings: Settings, device_id: str) -> int:
    rows = influx_rows(settings, "SELECT count(seq) FROM readings WHERE device_id = $d",
                       {"d": device_id})
    return int(rows[0]["count"]) if rows else 0


def unsealed(settings: Settings, ids: set[tuple[str, int]]) -> set[tuple[str, int]]:
    with Ledger(settings.ledger_path) as ledger:
        return {key for key in ids if ledger.locate(*key) is None}


# --- running the chain ----------------------------------------------------------------------------
@dataclass
class Chain:
    """The bridge and stream subprocesses of one test, with names and sessions of its own."""

    settings: Settings
    tag: str
    pipeline: Pipeline = field(init=False)
    instance: int = field(default_factory=lambda: random.randint(1000, 9999))

    def __post_init__(self) -> None:
        self.pipeline = Pipeline(self.settings)

    @property
    def bridge(self) -> str:
        return f"bridge-{self.tag}"

    def start_bridge(self) -> None:
        # The default mode, as operators run it: plain persistent subscriptions to every device
        # shard (vitals/<shard>/+) and the former vitals/+.
        self.pipeline.start("bridge", self.bridge, "--instance", str(self.instance),
                            "--progress-every", "1")

    def start_stream(self) -> None:
        self.pipeline.start("stream", f"stream-{self.tag}", "--worker-name", self.tag,
                            "--progress-seconds", "1")

    def close(self) -> None:
        self.pipeline.stop_all()
        # The bridge's persistent session would otherwise keep collecting messages for nobody.
        with contextlib.suppress(Exception):
            forget_session(self.settings, self.instance)


@contextlib.contextmanager
def running_chain(settings: Settings) -> Iterator[Chain]:
    chain = Chain(settings, uuid.uuid4().hex[:8])
    try:
        chain.start_bridge()
        chain.start_stream()
        yield chain
    finally:
        chain.close()


def wait_flowing(settings: Settings, chain: Chain, probe: DeviceIdentity, timeout: float = 45.0) -> None:
    """Publish probe readings until one comes out sealed in InfluxDB.

    Mosquitto acknowledges, then drops, what devices publish before the bridge's session first
    subscribed (afterwards the persistent session queues it), so the fleet may only start once the
    bridge has subscribed; a probe stored end to end proves that, and that the stream worker
    joined its group.
    """

    def one_probe() -> bool:
        chain.pipeline.check_alive()
        asyncio.run(run_fleet(settings, [probe], rate=5.0, count=1, drain_timeout=5.0))
        try:
            wait_until(lambda: stored_count(settings, probe.device_id) > 0, 4.0, "probe stored",
                       interval=0.25)
        except AssertionError:
            return False
        return True

    wait_until(one_probe, timeout, "a probe reading to pass bridge and stream into InfluxDB",
               interval=0.0)


def wait_all_sealed(settings: Settings, chain: Chain, acked: set[tuple[str, int]],
                    timeout: float = 40.0) -> None:
    pending = set(acked)

    def done() -> bool:
        chain.pipeline.check_alive()
        pending.intersection_update(unsealed(settings, pending))
        return not pending

    try:
        wait_until(done, timeout, "every acknowledged reading to be sealed", interval=0.5)
    except AssertionError as exc:
        sample = sorted(pending)[:5]
        raise AssertionError(f"{exc}: {len(pending)} of {len(acked)} unsealed, e.g. {sample}") from exc


# --- the checks -----------------------------------------------------------------------------------
def check_stored_and_sealed(settings: Settings, acked: set[tuple[str, int]],
                            received_lost: frozenset[tuple[str, int]] = frozenset()) -> int:
    """All the end-state assertions of the module docstring; returns the windows checked.

    ``received_lost``: readings that may be stored (on receipt) and sealed nowhere because Kafka
    lost their records in a restart; the caller checks that the audit reports them.
    """
    rows = influx_rows(settings, "SELECT * FROM readings")
    stored = [reading_from_row(row) for row in rows]
    assert not received_lost & acked
    per_id = Counter((s.canonical["device_id"], s.canonical["seq"]) for s in stored)
    repeated = {key: n for key, n in per_id.items() if n > 1}
    assert not repeated, f"readings stored more than once in InfluxDB: {sorted(repeated)[:5]}"
    missing = acked - per_id.keys()
    assert not missing, f"{len(missing)} acknowledged readings not in InfluxDB: {sorted(missing)[:5]}"

    salt_key = load_or_create_salt_key(settings)
    unsealed_stored = 0
    by_window: dict[str, dict[int, bytes]] = defaultdict(dict)
    with Ledger(settings.ledger_path) as ledger:
        for s in stored:
            device_id, seq = s.canonical["device_id"], s.canonical["seq"]
            leaf = reading_leaf_hash(s.canonical)
            assert s.canonical["salt"] == derive_salt(salt_key, device_id, seq)
            where = ledger.locate(device_id, seq)
            if where is None and (device_id, seq) in received_lost:
                unsealed_stored += 1
                continue
            assert where is not None, f"{device_id}#{seq} is in InfluxDB but in no sealed window"
            assert where.window_id == s.window_id, f"{device_id}#{seq}: window differs"
            assert where.leaf_hash == leaf, f"{device_id}#{seq}: ledger leaf differs from InfluxDB's"
            assert where.ts_us == s.canonical["ts_us"]
            assert where.index_in_window not in by_window[where.window_id]
            by_window[where.window_id][where.index_in_window] = leaf

        # D39: the stream stores no leaf field (never trusted: each leaf was recomputed and
        # compared with the ledger's above, so a forged one is caught there first)
        with_leaf = [(s.canonical["device_id"], s.canonical["seq"]) for s in stored
                     if s.leaf_hex is not None]
        assert not with_leaf, f"leaf fields stored for {with_leaf[:5]}"
        logged = [ledger.window_by_index(i) for i in range(ledger.log_size())]
        assert all(w is not None for w in logged)
        # The log may also hold windows of other entries (the API's access log); readings are in
        # the reading windows, and those are all from this test's raw topic.
        windows = [w for w in logged if w is not None and w.header.get("format") == WINDOW_FORMAT]
        assert windows, "no reading window sealed"
        for window in windows:
            assert window.topic == settings.raw_topic
            slots = by_window.pop(window.window_id, {})
            size = int(window.header["size"])
            assert sorted(slots) == list(range(size)), \
                f"window {window.window_id}: InfluxDB holds slots {sorted(slots)} of {size}"
            leaves = [slots[i] for i in range(size)]
            assert leaves == window.leaf_hashes, f"window {window.window_id}: leaves differ"
            assert root(leaves).hex() == window.header["root"], \
                f"window {window.window_id}: root does not match the readings in InfluxDB"
        assert not by_window, f"readings name windows the ledger lacks: {sorted(by_window)}"
        assert (sum(int(w.header["size"]) for w in windows) == len(stored) - unsealed_stored
                == ledger.reading_count())
    return len(windows)


def check_fleet(stats: FleetStats) -> None:
    assert stats.acked > DEVICES * RATE_HZ * SECONDS * 0.8, f"fleet barely ran: {stats.line()}"
    assert len(stats.acked_ids) == stats.generated, f"not every reading was acknowledged: {stats.line()}"
    assert stats.dropped == 0 and stats.rejected == 0 and stats.buffered == 0, stats.line()


# --- tests ----------------------------------------------------------------------------------------
def test_every_acknowledged_reading_stored_once_and_provable(isolated: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = isolated.with_overrides(stream_app_id=f"vc-e2e-{tag}", **WINDOW_OVERRIDES)
    identities = provision_devices(settings, DEVICES + 1, prefix=f"e2e{tag}")
    probe, fleet = identities[0], identities[1:]
    with running_chain(settings) as chain:
        wait_flowing(settings, chain, probe)
        stats = asyncio.run(run_fleet(settings, fleet, rate=RATE_HZ, duration=SECONDS))
        check_fleet(stats)
        wait_all_sealed(settings, chain, stats.acked_ids)
        chain.pipeline.check_alive()
    windows = check_stored_and_sealed(settings, stats.acked_ids)
    assert windows >= 4, f"only {windows} windows sealed: window cutting did not happen"

    # The same checks must catch one altered vital sign in InfluxDB, even with its leaf rehashed.
    tamper_one_reading(settings)
    with pytest.raises(AssertionError, match="ledger leaf differs from InfluxDB's"):
        check_stored_and_sealed(settings, stats.acked_ids)


def tamper_one_reading(settings: Settings) -> None:
    """Rewrite one stored reading with a different heart rate and the leaf hash to match."""
    row = influx_rows(settings, "SELECT * FROM readings LIMIT 1")[0]
    stored: StoredReading = reading_from_row(row)
    canonical = dict(stored.canonical, vitals={**stored.canonical["vitals"],
                                               "hr": stored.canonical["vitals"]["hr"] + 1})
    point = reading_point(canonical, reading_leaf_hash(canonical), stored.window_id, stored.late,
                          stored.received_us)

    async def write() -> None:
        async with InfluxClient(settings) as client:
            await client.write([point])

    asyncio.run(write())


class FleetThread:
    """The fleet on its own thread and event loop, so the test can break things meanwhile."""

    def __init__(self, settings: Settings, identities: list[DeviceIdentity]) -> None:
        self.live = FleetStats()
        self.result: FleetStats | None = None
        self.error: BaseException | None = None

        def on_progress(stats: FleetStats) -> None:
            self.live = stats

        def run() -> None:
            try:
                self.result = asyncio.run(run_fleet(settings, identities, rate=RATE_HZ, duration=SECONDS,
                                                    on_progress=on_progress, progress_interval=0.2,
                                                    drain_timeout=30.0))
            except BaseException as exc:  # surfaced by join()
                self.error = exc

        self.thread = threading.Thread(target=run, name="fleet", daemon=True)
        self.thread.start()

    def acked_beyond(self, mark: int) -> Callable[[], bool]:
        return lambda: self.live.acked >= mark

    def join(self, timeout: float) -> FleetStats:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"fleet still running after {timeout:.0f}s: {self.live.line()}"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def test_bridge_sigkill_and_mosquitto_restart_lose_nothing(fresh_stack: Callable[..., Stack]) -> None:
    tag = uuid.uuid4().hex[:8]
    stack = fresh_stack(("mosquitto", "kafka", "influxdb"), stream_app_id=f"vc-e2e-{tag}",
                        **WINDOW_OVERRIDES)
    settings = stack.settings
    identities = provision_devices(settings, DEVICES + 1, prefix="crash")
    probe, devices = identities[0], identities[1:]
    per_second = DEVICES * RATE_HZ
    # The bridge's default plain subscription is restored from Mosquitto's persistence file; a
    # shared group (--group) is not, on Mosquitto 2.0.11, and would lose readings here.
    with running_chain(settings) as chain:
        wait_flowing(settings, chain, probe)
        fleet = FleetThread(settings, devices)

        wait_until(fleet.acked_beyond(int(per_second * 2)), 15, "the fleet to get going")
        chain.pipeline.kill(chain.bridge)
        # Readings keep being acknowledged by Mosquitto, queued for the dead bridge's session.
        wait_until(fleet.acked_beyond(fleet.live.acked + int(per_second * 1.5)), 15,
                   "acks from Mosquitto while the bridge is dead")
        chain.start_bridge()
        # Subscribed again before Mosquitto goes: a bridge still starting while the broker is
        # away refuses to start at all (preflight, D20), which is not what this test is about.
        wait_bridges(settings, 1, chain.pipeline, timeout=30)
        wait_until(fleet.acked_beyond(fleet.live.acked + int(per_second * 1.5)), 15,
                   "the fleet to go on after the bridge restart")
        stack.restart("mosquitto")
        wait_until(lambda: fleet.live.connected == DEVICES or not fleet.thread.is_alive(), 20,
                   "devices to reconnect after Mosquitto's restart")

        stats = fleet.join(timeout=SECONDS + 40)
        check_fleet(stats)
        wait_all_sealed(settings, chain, stats.acked_ids, timeout=45.0)
        chain.pipeline.check_alive()
    check_stored_and_sealed(settings, stats.acked_ids)
