"""One timer samples a whole fleet: each device at its own rate and phase, no task per device.

A device sampling in its own coroutine (``Device.generate``) costs the event loop a timer, a
future and a task step per reading, and wakes its sender for every reading too: in a profile of
1,000 and 5,000 devices the loop's own bookkeeping was a third of the simulator's CPU per reading
(docs/PERFORMANCE.md, "Device simulator at 5,000 devices"). Here one task keeps every device's
next due time in a heap and, each time it wakes, samples every device that is due, so a wake
serves tens of readings. A reading's ``ts_us`` is still the moment it was taken; the schedule
(``start + offset + k / rate``, the same as ``Device.generate``) does not drift, and a reading is
at most ``MIN_SLEEP_S`` (plus whatever else the loop was doing) later than its due time.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Sequence

from vitalchain.devices.firmware import Device

MIN_SLEEP_S = 0.005  # the sampler wakes at most 200 times a second


async def sample_fleet(devices: Sequence[Device], rate: float, count: int | None,
                       duration: float | None, start: float) -> None:
    """Sample every device at ``rate`` from loop time ``start`` until each took ``count``
    readings or ``duration`` seconds passed (the same stop rule as ``Device.generate``).

    Every device is told it is done (``done_generating``) when it stops, and all of them if this
    task is cancelled or a sample fails (a corrupt seq file, say: the error propagates).
    """
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    heap: list[tuple[float, int, int, float]] = []  # (due, device index, k, offset)
    for i, device in enumerate(devices):
        offset = device.sampling_offset()
        if (count is not None and count <= 0) or (duration is not None and offset >= duration):
            device.done_generating()
        else:
            heap.append((start + offset, i, 0, offset))
    heapq.heapify(heap)
    try:
        while heap:
            now = loop.time()
            while heap and heap[0][0] <= now:
                _due, i, k, offset = heap[0]
                device = devices[i]
                device.sample()
                k += 1
                later = offset + k * interval
                if (count is not None and k >= count) or (duration is not None and later >= duration):
                    heapq.heappop(heap)
                    device.done_generating()
                else:
                    heapq.heapreplace(heap, (start + later, i, k, offset))
            if heap:
                await asyncio.sleep(max(MIN_SLEEP_S, heap[0][0] - loop.time()))
    finally:
        for device in devices:
            if device.generating:
                device.done_generating()
