"""Records of the long-running vitalchain workers of one state folder, so ``stack down`` finds them.

A worker (``bridge run``, ``stream run``, ``anchor run``, ``deadletters run``, ``api``) started by
hand with ``&`` is nobody's child: before these records ``stack down`` stopped the services under
it and left it spinning on connection errors. Each worker now writes
``<state_dir>/run/workers/<kind>-<pid>.json`` (pid, start time in clock ticks, command line) when
it starts and removes it when it ends; ``stack down`` signals every live one first, while the
services it needs are still there to let it stop cleanly.

A record is only trusted when its pid is alive *and* started at the recorded tick (pids are
recycled); a stale record (a SIGKILLed worker) is removed when read. Workers are signalled by pid,
never by process group: a worker started from a script shares the script's group.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitalchain.app.stack.supervisor import pid_alive, process_start_ticks
from vitalchain.config import Settings


@dataclass(frozen=True)
class WorkerRecord:
    kind: str
    pid: int
    start_ticks: int | None
    argv: list[str]
    started: float
    ready: bool
    path: Path

    def alive(self) -> bool:
        return pid_alive(self.pid) and (self.start_ticks is None
                                        or process_start_ticks(self.pid) == self.start_ticks)

    def describe(self) -> str:
        return f"{self.kind} (pid {self.pid}: {' '.join(self.argv[-3:])})"


def workers_dir(settings: Settings) -> Path:
    return settings.state_dir / "run" / "workers"


def _write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class WorkerHandle:
    """This process's own record: created by :func:`register_worker`, removed at exit."""

    def __init__(self, settings: Settings, kind: str) -> None:
        folder = workers_dir(settings)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{kind}-{os.getpid()}.json"
        self._data = {"kind": kind, "pid": os.getpid(), "start_ticks": process_start_ticks(os.getpid()),
                      "argv": ["vitalchain", *sys.argv[1:]], "started": time.time(), "ready": False}
        _write(self.path, self._data)
        atexit.register(self.remove)

    def mark_ready(self) -> None:
        """Say the worker does its job now (the bridge: subscribed), for ``bridge wait``."""
        if not self._data["ready"] and self.path.exists():
            self._data["ready"] = True
            _write(self.path, self._data)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def register_worker(settings: Settings, kind: str) -> WorkerHandle:
    """Record this process as a ``kind`` worker of ``settings.state_dir`` until it exits."""
    return WorkerHandle(settings, kind)


def running_workers(settings: Settings, kind: str | None = None) -> list[WorkerRecord]:
    """Live workers of this state folder (stale records are removed)."""
    folder = workers_dir(settings)
    found: list[WorkerRecord] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            record = WorkerRecord(str(data["kind"]), int(data["pid"]), data.get("start_ticks"),
                                  [str(a) for a in data.get("argv", [])], float(data.get("started", 0)),
                                  bool(data.get("ready")), path)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours: never signal on a record we cannot read
        if not record.alive():
            path.unlink(missing_ok=True)
            continue
        if kind is None or record.kind == kind:
            found.append(record)
    return found


def stop_workers(settings: Settings, timeout: float = 30.0,
                 say: Callable[[str], None] = lambda message: None) -> list[WorkerRecord]:
    """SIGTERM every live worker, wait up to ``timeout`` s together, SIGKILL the rest.

    Returns the workers that had to be killed (each named through ``say``).
    """
    workers = [w for w in running_workers(settings) if w.pid != os.getpid()]
    for worker in workers:
        say(f"stopping worker {worker.describe()}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGTERM)
    started = time.monotonic()
    waiting = list(workers)
    while waiting and time.monotonic() < started + timeout:
        time.sleep(0.1)
        for worker in [w for w in waiting if not w.alive()]:
            waiting.remove(worker)
            say(f"worker {worker.kind} (pid {worker.pid}) stopped after {time.monotonic() - started:.1f}s")
    killed = [w for w in waiting if w.alive()]
    for worker in killed:
        say(f"worker {worker.describe()} ignored SIGTERM for {timeout:.0f}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)
    for worker in workers:
        worker.path.unlink(missing_ok=True)
    return killed
