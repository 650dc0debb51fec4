"""The cyclic garbage collector's pace while a fleet runs.

A fleet holds thousands of long-lived objects per device (a paho client and its tables, the
patient model, keys, the seq counter) and makes many short-lived ones per reading (the reading's
dicts, a payload, a future per message). With CPython's default first-generation threshold (700
allocations) the young collections run hundreds of times a second, and a reading that waits in
its device's buffer for the rest of its batch (seconds, at low rates) survives two of them and
is promoted to the oldest generation; enough promotions trigger a full collection, which walks
every device's objects. At 5,000 devices x 0.4 Hz x 2 the collector took about 15 % of the
simulator's CPU, most of it in full collections, a cost that grows with the number of devices,
not readings (docs/PERFORMANCE.md, "sim4"). A first-generation threshold of
:data:`FLEET_GEN0_THRESHOLD` lets such readings die young (by reference count, as before) and left
no full collection in a 30 s run.

Only the pace changes: every object is still tracked and every cycle (a closed link and its paho
client refer to each other) is still collected. ``gc.freeze`` was the alternative; it would leave
any cyclic garbage made before the freeze uncollected for the rest of the run.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

FLEET_GEN0_THRESHOLD = 20_000

_lock = threading.Lock()
_running = 0  # fleets inside fleet_gc_pace (a test or the demo may run two at once)
_saved: tuple[int, ...] | None = None


@contextmanager
def fleet_gc_pace() -> Iterator[None]:
    """Raise the first generation's threshold to :data:`FLEET_GEN0_THRESHOLD` while any fleet
    runs, and put back what the process had once the last one ends (unless someone changed it
    meanwhile). A collector that is off (threshold 0) or already slower is left alone."""
    global _running, _saved
    with _lock:
        if _running == 0:
            _saved = gc.get_threshold()
            if 0 < _saved[0] < FLEET_GEN0_THRESHOLD:
                gc.set_threshold(FLEET_GEN0_THRESHOLD, *_saved[1:])
            else:
                _saved = None
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _saved is not None:
                if gc.get_threshold()[0] == FLEET_GEN0_THRESHOLD:
                    gc.set_threshold(*_saved)
                _saved = None
