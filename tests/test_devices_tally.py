"""The fleet's running tally (devices/firmware.py ``Tally``) against the devices' own counters.

No broker: the sampler fills buffers (dropping the oldest past the bound), and the sender's
settle paths run on futures resolved as PUBACKs, rejections and lost links would resolve them.
Whatever happens, the tally's totals are the sums of the devices' counters and its ``buffered``
is the readings the devices really hold (queue plus in flight)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from vitalchain.devices.firmware import Device, DeviceConfig, Tally
from vitalchain.devices.fleet import Fleet, FleetStats
from vitalchain.devices.registry import DeviceIdentity
from vitalchain.devices.sampler import sample_fleet
from vitalchain.devices.seqstore import SeqCounter
from vitalchain.devices.transport import LinkDown, PublishRejected

FIELDS = ("generated", "published", "acked", "buffered", "dropped", "rejected", "messages",
          "connect_attempts", "connected", "devices")


def _stats(fleet: Fleet) -> tuple[int, ...]:
    s = fleet.snapshot()
    return tuple(getattr(s, f) for f in FIELDS)


def test_tally_matches_the_devices_through_drops_acks_rejections_and_lost_links(
        tmp_path: Path) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        tally = Tally()
        config = DeviceConfig("127.0.0.1", 1, rate=200.0, batch=3, buffer_limit=40,
                              max_inflight=4)
        devices = [Device(DeviceIdentity(f"dev-{i}", f"pat-{i}", "pw"), config,
                          SeqCounter(tmp_path / f"dev-{i}.json"), tally=tally)
                   for i in range(6)]
        counted = Fleet(devices, FleetStats(), tally)
        summed = Fleet(devices, FleetStats())  # no tally: a pass over the devices
        for round_ in range(4):
            await sample_fleet(devices, 200.0, count=25, duration=None, start=loop.time())
            for i, device in enumerate(devices):
                device.generating = True
                futures = []
                for _ in range(config.max_inflight):  # what _pump does per message
                    readings = [device.queue.popleft() for _ in range(config.batch)]
                    future = loop.create_future()
                    device.inflight[future] = readings
                    device.published += len(readings)
                    device.messages += 1
                    device.tally.published += len(readings)
                    device.tally.messages += 1
                    future.add_done_callback(device._settled)
                    futures.append(future)
                futures[0].set_result(None)  # a PUBACK
                futures[1].set_exception(PublishRejected("PUBACK 0x87"))
                if (i + round_) % 2:
                    futures[2].set_exception(LinkDown("lost"))  # back to the queue
                await asyncio.sleep(0)
                device._recover_inflight()  # the link went down: the rest is requeued
                assert device.buffered == len(device.queue) and not device.inflight
            assert _stats(counted) == _stats(summed)
            assert counted.stats.buffered == sum(d.buffered for d in devices)
        s = counted.snapshot()
        assert s.dropped > 0 and s.rejected > 0 and s.acked > 0 and s.buffered > 0
        assert s.generated == s.acked + s.dropped + s.rejected + s.buffered

    asyncio.run(run())
