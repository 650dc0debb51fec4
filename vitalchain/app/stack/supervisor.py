"""Start, watch and stop the local services.

``up`` starts each service as a detached child (its own session, so it outlives the command that
started it and ``down`` can signal its whole process group), records its pid and command line under
``<state_dir>/run/``, and returns only once every service answers its probe. ``down`` first stops the
state folder's workers (``vitalchain.app.workers``: bridge, stream, anchor, dead-letter archiver,
API, however they were started), then sends each service SIGTERM, waits, then SIGKILL, and removes
the records, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitalchain.app.stack.postgres import ensure_ledger_database
from vitalchain.app.stack.probes import ProbeFailed
from vitalchain.app.stack.services import SERVICES, Service, service
from vitalchain.app.stack.topology import ensure_database, ensure_topics
from vitalchain.config import Settings
from vitalchain.errors import Unavailable


class ServiceStartError(Unavailable):
    """A service did not become usable; the message names it and its log file."""


@dataclass
class ServiceStatus:
    name: str
    port: int
    pid: int | None
    running: bool
    healthy: bool
    detail: str
    log: Path


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def process_start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with ``pid`` it names one process for
    good, because pids are recycled (pid_max is 32768 here) and a signal to a recycled pid would hit
    an unrelated process, possibly another stack's service of the same binary."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def service_env(svc: Service) -> dict[str, str]:
    """The environment ``svc`` starts with: the stack's, plus the service's own settings
    (:attr:`Service.env`) for what the stack's environment does not set already."""
    env = dict(os.environ)
    for name, value in svc.env:
        env.setdefault(name, value)
    return env


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not alive for our purposes.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields and fields[0] == "Z":
            return False
    return True


class Stack:
    def __init__(self, settings: Settings, log: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.run_dir = settings.state_dir / "run"
        self.log = log or (lambda message: None)
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # --- records --------------------------------------------------------------------
    def _record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.settings.logs_dir / f"{name}.log"

    def _read_record(self, name: str) -> dict | None:
        path = self._record_path(name)
        if not path.is_file():
            return None
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None

    def pid(self, name: str) -> int | None:
        record = self._read_record(name)
        if record and pid_alive(int(record["pid"])) and self._is_ours(int(record["pid"]), record):
            return int(record["pid"])
        return None

    @staticmethod
    def _is_ours(pid: int, record: dict) -> bool:
        """Guard against a recycled pid: the process must be the very one we started."""
        started = record.get("start_ticks")
        if started is not None:
            return process_start_ticks(pid) == started
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            return True  # no /proc: trust the pid
        return os.path.basename(cmdline) == os.path.basename(record["argv"][0])

    # --- start ----------------------------------------------------------------------
    def start(self, name: str) -> None:
        svc = service(name)
        if self.pid(name) is not None:
            return
        argv = svc.prepare(self.settings)
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path(name), "ab")  # noqa: SIM115 - handed to the child
        with log_file:
            process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       cwd=self.settings.state_dir, env=service_env(svc))
        self._record_path(name).write_text(json.dumps(
            {"pid": process.pid, "argv": argv, "port": svc.port(self.settings),
             "started": time.time(), "start_ticks": process_start_ticks(process.pid)}))
        self._children[name] = process

    def wait_healthy(self, name: str, deadline_s: float = 60.0) -> str:
        svc = service(name)
        deadline = time.monotonic() + deadline_s
        last_error = "not probed yet"
        while time.monotonic() < deadline:
            if self.pid(name) is None:
                raise ServiceStartError(
                    f"{name} exited during start-up; its log {self.log_path(name)} ends with:\n"
                    f"{_tail(self.log_path(name))}")
            try:
                return svc.probe(self.settings)
            except (ProbeFailed, OSError) as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise ServiceStartError(
            f"{name} did not become usable within {deadline_s:.0f}s on port "
            f"{svc.port(self.settings)} ({last_error}); see its log {self.log_path(name)}:\n"
            f"{_tail(self.log_path(name))}")

    def up(self, names: tuple[str, ...] | None = None, deadline_s: float = 60.0) -> None:
        selected = [s for s in SERVICES if (names is None or s.name in names) and s.wanted(self.settings)]
        for svc in selected:
            if self.pid(svc.name) is None:
                self.log(f"starting {svc.name} on {self.settings.host}:{svc.port(self.settings)}")
                self.start(svc.name)
        for svc in selected:
            detail = self.wait_healthy(svc.name, deadline_s)
            self.log(f"{svc.name:<10} healthy ({detail})")
        if any(s.name == "postgres" for s in selected):
            ensure_ledger_database(self.settings)
        if names is None or "kafka" in names:
            ensure_topics(self.settings)
        if names is None or "influxdb" in names:
            ensure_database(self.settings)

    # --- stop -----------------------------------------------------------------------
    def stop(self, name: str, sig: int | None = None) -> None:
        svc = service(name)
        sig = svc.stop_signal if sig is None else sig
        record = self._read_record(name)
        pid = self.pid(name)
        if pid is not None and record is not None:
            still_ours = lambda: pid_alive(pid) and self._is_ours(pid, record)  # noqa: E731
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + svc.stop_timeout
            while still_ours() and time.monotonic() < deadline:
                self._reap(name)
                time.sleep(0.05)
            if still_ours():
                self.log(f"{name} ignored signal {int(sig)} for {svc.stop_timeout:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                while still_ours():
                    self._reap(name)
                    time.sleep(0.05)
            self._reap(name)
        if record is not None:
            self._record_path(name).unlink(missing_ok=True)

    def kill(self, name: str) -> None:
        """SIGKILL a service without cleaning up its record (for failure tests)."""
        record = self._read_record(name)
        pid = self.pid(name)
        if pid is not None and record is not None:
            os.killpg(pid, signal.SIGKILL)
            while pid_alive(pid) and self._is_ours(pid, record):
                self._reap(name)
                time.sleep(0.02)

    def _reap(self, name: str) -> None:
        child = self._children.get(name)
        if child is not None and child.poll() is not None:
            self._children.pop(name, None)

    def down(self, worker_timeout: float = 30.0) -> None:
        """Stop this state folder's workers first (while the services they need are there to
        let them stop cleanly), then every service."""
        from vitalchain.app.workers import stop_workers  # workers imports this module

        stop_workers(self.settings, worker_timeout, say=self.log)
        for svc in reversed(SERVICES):
            if self._read_record(svc.name) is not None:
                self.log(f"stopping {svc.name}")
            self.stop(svc.name)

    def restart(self, name: str, deadline_s: float = 60.0) -> None:
        self.stop(name)
        self.start(name)
        self.wait_healthy(name, deadline_s)
        if name == "kafka":
            ensure_topics(self.settings)
        if name == "postgres":
            ensure_ledger_database(self.settings)

    # --- status ---------------------------------------------------------------------
    def status(self) -> list[ServiceStatus]:
        result = []
        for svc in SERVICES:
            if not svc.wanted(self.settings) and self._read_record(svc.name) is None:
                continue
            pid = self.pid(svc.name)
            healthy, detail = False, "not running"
            if pid is not None:
                try:
                    detail = svc.probe(self.settings)
                    healthy = True
                except (ProbeFailed, OSError) as exc:
                    detail = f"running but not usable: {exc}"
            elif self._read_record(svc.name) is not None:
                detail = f"down (process gone; see {self.log_path(svc.name)})"
            result.append(ServiceStatus(svc.name, svc.port(self.settings), pid, pid is not None,
                                        healthy, detail, self.log_path(svc.name)))
        return result


def child_pids_of_stack(stack: Stack) -> list[int]:
    """Pids still alive from this stack's records (empty after a clean ``down``)."""
    return [pid for svc in SERVICES if (pid := stack.pid(svc.name)) is not None]


def describe(svc: Service, settings: Settings) -> str:
    return f"{svc.name} on {settings.host}:{svc.port(settings)}"
