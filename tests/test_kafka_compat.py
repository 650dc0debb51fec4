"""The guarded aiokafka close: a second close that meets a half-finished first one is harmless."""

from __future__ import annotations

import asyncio

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
