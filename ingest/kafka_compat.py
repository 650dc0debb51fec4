"""One guard around aiokafka 0.14's connection close, installed by the stream worker.

``AIOKafkaConnection.close`` reads ``self._read_task.done()`` after another close of the same
connection may already have set ``_read_task`` to None: Faust stops its consumer on the consumer's
own thread while the worker's shutdown closes the same client, and when a worker is stopped within
a second or two of starting (``vitalchain stack down`` right after ``stack up``) both closes meet
and the consumer thread dies with ``AttributeError: 'NoneType' object has no attribute 'done'``
(seen in CI: tests/test_cli_first_hour.py, an expected stop printed as a traceback). The
connection is closed either way; only the check is unsafe. The guarded close below is aiokafka's
own, with the read task taken once into a local, so a second close finds nothing left to cancel.
"""

from __future__ import annotations

import collections
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.conn import AIOKafkaConnection

_GUARD_MARK = "_vitalchain_guarded"


def _guarded_close(self: Any, reason: Any = None, exc: BaseException | None = None) -> Any:
    """aiokafka 0.14's ``close``, safe when two closes of one connection interleave."""
    if self._reader is not None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
        read_task, self._read_task = self._read_task, None
        if read_task is not None and not read_task.done():
            read_task.cancel()
        requests, self._requests = self._requests, collections.deque()
        for _, _, fut in requests:
            if not fut.done():
                error = kafka_errors.KafkaConnectionError(
                    f"Connection at {self._host}:{self._port} closed")
                if exc is not None:
                    error.__cause__ = exc
                    error.__context__ = exc
                fut.set_exception(error)
        on_close, self._on_close_cb = self._on_close_cb, None
        if on_close is not None:
            on_close(self, reason)
    if self._idle_handle is not None:
        self._idle_handle.cancel()
    return self._closed_fut


def guard_connection_close() -> None:
    """Install the guarded close once per process (idempotent)."""
    if getattr(AIOKafkaConnection.close, _GUARD_MARK, False):
        return
    setattr(_guarded_close, _GUARD_MARK, True)
    AIOKafkaConnection.close = _guarded_close  # type: ignore[method-assign]


# How long the broker may hold a fetch when no record is there.  Faust 0.15 hard-codes 1,500 ms
# for its worker consumer (faust/transport/drivers/aiokafka.py, ``_create_worker_consumer``);
# when records arrive during that wait, a broker that answers only at the deadline (measured
# here: tansu, queryable p99 2.0 s at 100 readings/s, max 2.1 s) delays them by up to the whole
# wait, which is most of a clinician's one-second budget.  An idle worker pays for it with a few
# more empty fetches per second.
# The stream takes it from VITALCHAIN_KAFKA_FETCH_WAIT_MS (the same default, vitalchain.config).
FETCH_MAX_WAIT_MS = 100
_FETCH_MARK = "_vitalchain_fetch_wait"
_fetch_wait_ms = FETCH_MAX_WAIT_MS  # what the next worker consumer created asks for


def shorten_fetch_wait(max_wait_ms: int = FETCH_MAX_WAIT_MS) -> None:
    """Make Faust's worker consumers created from now on ask for ``max_wait_ms`` fetches (the
    patch is applied once; a later call only changes the wait)."""
    global _fetch_wait_ms
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread as ConsumerThread

    _fetch_wait_ms = max_wait_ms
    original = ConsumerThread._create_worker_consumer
    if getattr(original, _FETCH_MARK, False):
        return

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _fetch_wait_ms  # read by AIOKafkaConsumer.start's Fetcher
        return consumer

    setattr(create, _FETCH_MARK, True)
    ConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]
