"""The cyclic garbage collector's pace in a stream worker process.

A stream worker keeps every reading it takes for a window's length (a 2 s window at 10,000
readings/s is 20,000 readings, each a handful of container objects: its canonical dict and
vitals, its ``WindowReading``, its keys in the dedup and receipt maps) and drops them all when
the window seals. With CPython's default first-generation threshold (700 allocations) such a
reading survives several young collections and is promoted to the oldest generation, and the
promotions trigger full collections, each walking the whole heap (Faust, aiokafka, the open
windows): measured at the issue's row (2,000 devices x 5 Hz x 10, 40 s), the collector took
3.8 s of the worker's 18.4 s of CPU (21 %), 2.9 s of it in 18 full collections
(docs/PERFORMANCE.md, "Stream worker: the collector's pace and a leaner `offer`";
docs/DECISIONS.md D51).

A first-generation threshold of :data:`STREAM_GEN0_THRESHOLD` lets a window's readings die
young, by reference count when it seals, instead of being walked again and again. Only the pace
changes: every object is still tracked and every cycle is still collected.
"""

from __future__ import annotations

import gc

STREAM_GEN0_THRESHOLD = 20_000


def set_stream_gc_pace() -> tuple[int, ...]:
    """Raise the first generation's threshold to :data:`STREAM_GEN0_THRESHOLD` for the rest of
    the process (a stream worker is a process of its own); a collector that is off (threshold
    0) or already slower is left alone. Returns the thresholds now in force."""
    first, *rest = gc.get_threshold()
    if 0 < first < STREAM_GEN0_THRESHOLD:
        gc.set_threshold(STREAM_GEN0_THRESHOLD, *rest)
    return gc.get_threshold()
