"""The cyclic garbage collector's pace in the processes that hold many readings at once.

Two processes keep thousands of young objects alive for seconds and then drop them together: a
fleet of simulated devices (each reading waits in its device's buffer for the rest of its batch)
and a stream worker (each reading lives until its window seals: 20,000 of them in a 2 s window at
10,000 readings/s). With CPython's default first-generation threshold of 700 allocations such
objects survive young collections, are promoted, and the promotions trigger full collections that
walk the whole heap: every device's paho client and model in the simulator, Faust and aiokafka in
the worker. Measured: ~15 % of the simulator's CPU at 5,000 devices (D48) and 16-21 % of the
stream worker's at the issue's row (D51); 0.9-1.3 % of the bridge's, which is why the bridge keeps
the default (docs/PERFORMANCE.md, "stream5").

A first-generation threshold of :data:`GEN0_THRESHOLD` lets them die young, by reference count,
as before. Only the pace changes: every object is still tracked and every cycle still collected.
A collector switched off (threshold 0) or already slower is left alone. ``gc.freeze`` was the
alternative; it leaves cyclic garbage made before the freeze uncollected for the rest of the run.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

GEN0_THRESHOLD = 20_000

_lock = threading.Lock()
_running = 0  # callers inside gen0_raised (a test or the demo may run two fleets at once)
_saved: tuple[int, ...] | None = None


def raise_gen0() -> tuple[int, ...]:
    """Raise the first generation's threshold to :data:`GEN0_THRESHOLD` for the rest of the
    process (a stream worker is a process of its own); returns the thresholds now in force."""
    first, *rest = gc.get_threshold()
    if 0 < first < GEN0_THRESHOLD:
        gc.set_threshold(GEN0_THRESHOLD, *rest)
    return gc.get_threshold()


@contextmanager
def gen0_raised() -> Iterator[None]:
    """:func:`raise_gen0` while any caller is inside (a fleet runs), and the process's own
    setting back once the last one leaves (unless someone changed it meanwhile)."""
    global _running, _saved
    with _lock:
        if _running == 0:
            _saved = gc.get_threshold()
            if raise_gen0() == _saved:
                _saved = None  # switched off or already slower: nothing to put back
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _saved is not None:
                if gc.get_threshold()[0] == GEN0_THRESHOLD:
                    gc.set_threshold(*_saved)
                _saved = None
