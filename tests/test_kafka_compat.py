"""aiokafka under Faust on tansu: the guarded close (a second close that meets a half-finished
first one is harmless) and the fetch wait a worker's consumer asks for."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.conn import AIOKafkaConnection, create_conn

from vitalchain.ingest.kafka_compat import guard_connection_close


def test_interleaved_close_of_one_connection_does_not_raise(stack) -> None:
    guard_connection_close()
    guard_connection_close()  # idempotent: installed once however often the worker starts
    host, port = stack.settings.kafka_bootstrap.rsplit(":", 1)

    async def scenario() -> tuple[bool, bool]:
        conn = await create_conn(host, int(port))
        assert conn.connected()
        # Where the other close stands when the race hits: it has taken the read task
        # and not yet cleared the reader.
        task = conn._read_task
        conn._read_task = None
        fut = conn.close()
        task.cancel()
        await asyncio.wait_for(fut, 10)
        second = conn.close()  # and a late third party closing again
        return conn.connected(), second is fut

    connected, same = asyncio.run(scenario())
    assert not connected
    assert same


def test_guard_is_aiokafkas_close_from_then_on() -> None:
    guard_connection_close()
    assert getattr(AIOKafkaConnection.close, "_vitalchain_guarded", False)


@pytest.mark.parametrize("wait_ms", [37, 250])
def test_a_workers_consumer_asks_for_the_configured_fetch_wait(wait_ms: int, tmp_path) -> None:
    """Faust hard-codes a 1,500 ms fetch wait, which tansu holds to the deadline: the worker's
    consumer must ask for VITALCHAIN_KAFKA_FETCH_WAIT_MS instead, and a second app in the same
    process (another setting) for its own value, not the first one's."""
    from vitalchain.config import load_settings
    from vitalchain.ingest.stream import create_app

    async def created() -> int:
        settings = load_settings(environ={"VITALCHAIN_KAFKA_FETCH_WAIT_MS": str(wait_ms)},
                                 state_dir=tmp_path)
        app = create_app(settings, "fetch-wait")
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer.stop()

    assert asyncio.run(created()) == wait_ms


@pytest.mark.parametrize("wait_ms", ["0", "-5", "10001", "0.5", "soon"])
def test_bad_fetch_wait_setting_is_refused(wait_ms: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from vitalchain.config import ConfigError, load_settings

    monkeypatch.setenv("VITALCHAIN_KAFKA_FETCH_WAIT_MS", wait_ms)
    with pytest.raises(ConfigError, match="KAFKA_FETCH_WAIT_MS"):
        load_settings()
