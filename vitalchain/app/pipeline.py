"""Run the pipeline's long-lived components (bridge, stream workers, anchoring worker) as processes.

Each component is the same ``vitalchain <component> run`` command an operator would start, with the
settings passed through ``VITALCHAIN_*`` variables and its output in ``<state>/logs``. The demo, the
end-to-end tests and the benchmarks use this, so what they exercise is what production runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vitalchain.config import Settings, to_environ

if TYPE_CHECKING:
    from vitalchain.devices.registry import DeviceIdentity

COMMANDS = {
    "bridge": ["bridge", "run"],
    "stream": ["stream", "run"],
    "anchor": ["anchor", "run"],
    "api": ["api"],
    "deadletters": ["deadletters", "run"],
}


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Pipeline:
    settings: Settings
    extra_env: dict[str, str] = field(default_factory=dict)
    components: dict[str, Component] = field(default_factory=dict)

    def start(self, kind: str, instance: str | None = None, *args: str) -> Component:
        name = instance or kind
        if name in self.components and self.components[name].alive():
            raise RuntimeError(f"{name} is already running")
        env = dict(os.environ)
        env.update(to_environ(self.settings))
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        log = self.settings.logs_dir / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "vitalchain", *COMMANDS[kind], *args],
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
        component = Component(name, process, log)
        self.components[name] = component
        return component

    def kill(self, name: str) -> None:
        """SIGKILL: the crash the tests inflict."""
        component = self.components[name]
        if component.alive():  # never signal a reaped (possibly recycled) pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(component.process.pid, signal.SIGKILL)
        component.process.wait(30)

    def stop(self, name: str, timeout: float = 30.0) -> int | None:
        component = self.components.get(name)
        if component is None:
            return None
        if component.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(component.process.pid, signal.SIGTERM)
            try:
                component.process.wait(timeout)
            except subprocess.TimeoutExpired:
                # still unreaped, so the pid is still this child's: safe to signal
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(component.process.pid, signal.SIGKILL)
                component.process.wait(30)
        return component.process.returncode

    def stop_all(self) -> None:
        for name in list(self.components):
            self.stop(name)

    def check_alive(self) -> None:
        """Raise with the log's tail if a component died on its own."""
        for component in self.components.values():
            if not component.alive():
                tail = "\n".join(component.log.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"{component.name} exited with {component.process.returncode}; "
                                   f"{component.log} ends with:\n{tail}")

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def bridge_plan(settings: Settings, bridges: int) -> list[tuple[str, list[str]]]:
    """(component name, ``bridge run`` arguments) of ``bridges`` bridges splitting the shards
    round-robin: bridge ``i`` is instance ``i`` (its own MQTT user and persistent session, D7) and
    owns shards ``i, i+bridges, ...`` (docs/DEVICES.md)."""
    from vitalchain.core.payload.shards import shards_of_bridge

    plan = []
    for index in range(bridges):
        shards = shards_of_bridge(index, bridges, settings.mqtt_shards)
        plan.append((f"bridge-{index}", ["--instance", str(index),
                                         "--shards", ",".join(map(str, shards))]))
    return plan


def start_bridges(pipeline: Pipeline, bridges: int, *args: str) -> list[str]:
    """Start ``bridges`` bridges over all the shards (see :func:`bridge_plan`); their names."""
    names = []
    for name, plan_args in bridge_plan(pipeline.settings, bridges):
        pipeline.start("bridge", name, *plan_args, *args)
        names.append(name)
    return names


def wait_bridges(settings: Settings, count: int, pipeline: Pipeline | None = None,
                 timeout: float = 60.0) -> None:
    """Wait until ``count`` bridges of this state folder are subscribed.

    Mosquitto drops what a device publishes before its shard's bridge first subscribed (later its
    persistent session queues it), so a fleet may start only once every shard has its reader: one
    probe reading proves only its own shard's path."""
    from vitalchain.app.workers import running_workers

    deadline = time.monotonic() + timeout
    while True:
        if pipeline is not None:
            pipeline.check_alive()
        ready = [w for w in running_workers(settings, "bridge") if w.ready]
        if len(ready) >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ready)} of {count} bridges subscribed within {timeout:.0f}s")
        time.sleep(0.2)


def wait_flowing(settings: Settings, probe: DeviceIdentity, pipeline: Pipeline | None = None,
                 timeout: float = 90.0, settle: float | None = None) -> None:
    """Publish probe readings until one is stored in InfluxDB: the bridge has subscribed and the
    stream worker joined its group.

    Mosquitto acknowledges, then drops, what devices publish before the bridge's session first
    subscribed (afterwards the persistent session queues it), so a fleet may only start once a
    probe came out the other end. Raises ``TimeoutError`` naming the wait; a component of
    ``pipeline`` that died meanwhile raises with its log's tail.
    """
    from vitalchain.devices.fleet import run_fleet
    from vitalchain.storage.influx import InfluxClient

    async def stored() -> bool:
        async with InfluxClient(settings, retries=1) as client:
            rows = await client.query("SELECT count(seq) FROM readings WHERE device_id = $d",
                                      {"d": probe.device_id})
        return bool(rows and rows[0].get("count"))

    settle = settings.idle_seal_seconds + 4.0 if settle is None else settle
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pipeline is not None:
            pipeline.check_alive()
        asyncio.run(run_fleet(settings, [probe], rate=5.0, count=1, drain_timeout=5.0))
        settle_end = time.monotonic() + settle
        while time.monotonic() < settle_end:
            if asyncio.run(stored()):
                return
            time.sleep(0.25)
    raise TimeoutError(f"no probe reading reached InfluxDB within {timeout:.0f}s; "
                       f"see the logs in {settings.logs_dir}")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
