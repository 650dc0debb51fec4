"""The fleet sampler: every device at its own rate and phase, the stop rules of
``Device.generate``, and every device told it is done however sampling ends. No broker needed:
sampling only fills each device's buffer."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from pathlib import Path

import pytest

from vitalchain.devices.firmware import Device, DeviceConfig
from vitalchain.devices.registry import DeviceIdentity
from vitalchain.devices.sampler import sample_fleet
from vitalchain.devices.seqstore import SeqCounter
from vitalchain.devices.transport import LinkDown, MqttLink


def _fleet(tmp_path: Path, n: int, rate: float, batch: int = 5) -> list[Device]:
    config = DeviceConfig("127.0.0.1", 1, rate=rate, batch=batch, buffer_limit=100_000)
    return [Device(DeviceIdentity(f"dev-{i}", f"pat-{i}", "pw"), config,
                   SeqCounter(tmp_path / f"dev-{i}.json"))
            for i in range(n)]


def test_count_gives_each_device_exactly_that_many_readings_in_seq_order(tmp_path: Path) -> None:
    async def run() -> list[Device]:
        devices = _fleet(tmp_path, 20, rate=100.0)
        await sample_fleet(devices, 100.0, count=7, duration=None,
                           start=asyncio.get_running_loop().time())
        return devices

    for device in asyncio.run(run()):
        assert device.generated == 7 and not device.generating
        assert [r["seq"] for r in device.queue] == list(range(7))
        assert {r["device_id"] for r in device.queue} == {device.identity.device_id}


def test_duration_keeps_each_devices_rate_and_phase(tmp_path: Path) -> None:
    rate, duration = 50.0, 0.6

    async def run() -> tuple[list[Device], float]:
        devices = _fleet(tmp_path, 30, rate=rate)
        started = time.time()
        await sample_fleet(devices, rate, count=None, duration=duration,
                           start=asyncio.get_running_loop().time())
        return devices, started

    devices, started = asyncio.run(run())
    for device in devices:
        assert not device.generating
        # offset in [0, 1/rate): 30 readings (offset + k/rate < 0.6 for k < 30)
        assert device.generated == round(duration * rate)
        stamps = [r["ts_us"] / 1e6 for r in device.queue]
        assert stamps == sorted(stamps) and stamps[0] >= started - 0.001
        # on schedule: never early, late by at most a tick plus scheduling noise on a busy box
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert sum(gaps) / len(gaps) == pytest.approx(1 / rate, rel=0.25)
    phases = {round(d.queue[0]["ts_us"] / 1e6 - started, 3) for d in devices}
    assert len(phases) > 5  # devices spread over the interval, not in step


def test_a_failing_sample_stops_everyone_and_surfaces(tmp_path: Path) -> None:
    async def run() -> list[Device]:
        devices = _fleet(tmp_path, 4, rate=100.0)

        def broken() -> int:  # as SeqCounter does when it cannot persist its next block
            raise ValueError("seq file is corrupt")

        devices[2].seq.take = broken  # type: ignore[method-assign]
        with pytest.raises(ValueError, match="corrupt"):
            await sample_fleet(devices, 100.0, count=50, duration=None,
                               start=asyncio.get_running_loop().time())
        return devices

    assert all(not d.generating for d in asyncio.run(run()))


def test_cancelled_sampling_tells_every_device(tmp_path: Path) -> None:
    async def run() -> list[Device]:
        devices = _fleet(tmp_path, 10, rate=20.0)
        task = asyncio.ensure_future(sample_fleet(devices, 20.0, None, None,
                                                  asyncio.get_running_loop().time()))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return devices

    devices = asyncio.run(run())
    assert all(not d.generating and d.generated >= 1 for d in devices)


def test_the_sender_is_woken_per_batch_not_per_reading(tmp_path: Path) -> None:
    async def run() -> list[bool]:
        (device,) = _fleet(tmp_path, 1, rate=10.0, batch=3)
        woken = []
        for _ in range(6):
            device._wake.clear()
            device.sample()
            woken.append(device._wake.is_set())
        return woken

    assert asyncio.run(run()) == [False, False, True, True, True, True]  # 3+ queued: a batch is ready


def test_with_every_window_slot_taken_only_a_puback_wakes_the_sender(tmp_path: Path) -> None:
    async def run() -> tuple[list[bool], bool]:
        (device,) = _fleet(tmp_path, 1, rate=10.0, batch=2)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(device.config.max_inflight)]
        for future in futures:  # the in-flight window is full
            device.inflight[future] = [{"seq": -1}]
            future.add_done_callback(device._settled)
        woken = []
        for _ in range(4):
            device._wake.clear()
            device.sample()
            woken.append(device._wake.is_set())
        futures[0].set_result(None)  # a PUBACK
        await asyncio.sleep(0)
        return woken, device._wake.is_set()

    assert asyncio.run(run()) == ([False, False, False, False], True)


def test_a_refused_tcp_connect_is_link_down_and_leaks_no_socket() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def run() -> MqttLink:
        link = MqttLink("127.0.0.1", port, "dev-x", "dev-x", "pw")
        with pytest.raises(LinkDown, match="cannot reach"):
            await link.connect(timeout=5)
        return link

    link = asyncio.run(run())
    assert link.closed.done() and link._client.ready_socket is None
