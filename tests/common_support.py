"""Waiting on a condition with a deadline, and small fixtures of data, shared by the tests."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, message: str = "condition",
               interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)
        last = predicate()
    return last


async def wait_until_async(predicate: Callable[[], Awaitable[T]], timeout: float = 30.0,
                           message: str = "condition", interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    last = await predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        await asyncio.sleep(interval)
        last = await predicate()
    return last


def write_registry(state_dir: Path, devices: dict[str, str]) -> None:
    """The device registry (device id -> patient id) as provisioning leaves it: the API decides a
    clinician's consent for device-scoped routes from it, before looking anything up."""
    path = state_dir / "devices" / "registry.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(devices) + "\n")


def demo_env(state_dir: Path) -> dict[str, str]:
    """The environment of a ``vitalchain`` run on a private stack: its own state folder, free ports,
    short windows and a short anchoring interval (the demo tests)."""
    from vitalchain.app.stack.ports import free_ports

    mqtt, kafka, influx, eth, rpc, api = free_ports(6)
    env = dict(os.environ)
    env.update({"VITALCHAIN_STATE_DIR": str(state_dir), "VITALCHAIN_MQTT_PORT": str(mqtt),
                "VITALCHAIN_KAFKA_PORT": str(kafka), "VITALCHAIN_INFLUX_PORT": str(influx),
                "VITALCHAIN_ETH_PORT": str(eth), "VITALCHAIN_INFLUX_RPC_PORT": str(rpc),
                "VITALCHAIN_API_PORT": str(api), "VITALCHAIN_WINDOW_SECONDS": "3",
                "VITALCHAIN_IDLE_SEAL_SECONDS": "2", "VITALCHAIN_ANCHOR_INTERVAL_SECONDS": "3"})
    return env


def run_vitalchain(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m vitalchain ARGS`` in ``env``, output captured."""
    return subprocess.run([sys.executable, "-m", "vitalchain", *args], env=env, text=True,
                          capture_output=True, timeout=timeout)
