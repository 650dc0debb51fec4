"""A worker whose service is gone for good says so in one line and exits, instead of spinning.

Measured before this (tests/test_cli_first_hour.py): with Kafka killed under it, ``stream run``
logged about 74 aiokafka error lines a second and, on SIGTERM, needed about 63 s to stop, ending in
tracebacks of Faust's consumer stop timeouts. The watchdog checks the worker's services every
half second (a TCP connect: only a refused connection counts, never a slow answer). When one is gone,
the worker says so in one line and silences the client libraries' loggers (restored, with a line,
if it comes back: a service restart takes a second or two); when it has not answered for
``grace`` seconds, one more line names the service and the fix and the worker is stopped; one that
has not stopped ``exit_after`` seconds later is ended with exit status 1.

What is safe to drop at that point: the stream acknowledges Kafka offsets only after a window is
sealed, and a Kafka that is gone has nothing more to deliver; sealing itself (InfluxDB, then the
ledger) does not need Kafka and runs before Faust's slow consumer shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from vitalchain.app.preflight import SERVICES
from vitalchain.config import Settings

NOISY_LOGGERS = ("aiokafka", "kafka", "faust", "mode")
LABELS = {name: label for name, (label, *_rest) in SERVICES.items()}


def _set_noisy_levels(levels: dict[str, int] | None) -> dict[str, int]:
    """Silence the client libraries' loggers (``None``) or restore ``levels``; return the old ones."""
    old = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1 if levels is None else levels[name])
    return old


def _quiet_exit_hooks() -> None:
    """Once stopping, a client thread dying of the lost connection is expected: no traceback."""
    threading.excepthook = lambda args: None


def stop_this_process(exit_after: float) -> Callable[[str], None]:
    """The default reaction: SIGTERM ourselves (a clean stop), then exit 1 if that hangs."""

    def react(message: str) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(exit_after)
        print(f"{message.split(':')[0]}: still stopping after {exit_after:.0f}s; exiting",
              file=sys.stderr, flush=True)
        os._exit(1)

    return react


def _endpoints(settings: Settings, service: str) -> list[tuple[str, int]]:
    if service == "kafka":
        pairs = [server.strip().rpartition(":") for server in settings.kafka_bootstrap.split(",")]
        return [(host or settings.host, int(port)) for host, _, port in pairs]
    url = urlsplit(settings.influx_url if service == "influxdb" else settings.eth_rpc_url)
    return [(url.hostname or settings.host, url.port or (443 if url.scheme == "https" else 80))]


def refused(settings: Settings, service: str, timeout: float = 3.0) -> str | None:
    """Why ``service`` is gone (every address refuses connections), or None.

    Only a refusal counts: a slow answer on a loaded machine, or a timeout to a remote host, is
    not a service that is gone, and must not stop a worker that would ride it out.
    """
    reasons = []
    for host, port in _endpoints(settings, service):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return None
        except (ConnectionRefusedError, socket.gaierror) as exc:
            reasons.append(f"{host}:{port} ({exc.strerror or exc})")
        except OSError:
            return None  # timeout or other trouble: not proof that it is gone
    return f"{LABELS[service]} does not answer at {', '.join(reasons)}"


def watch(settings: Settings, name: str, *services: str, grace: float = 5.0,
          interval: float = 0.5, exit_after: float = 5.0,
          react: Callable[[str], None] | None = None) -> threading.Thread:
    """Start a daemon thread watching ``services``; see the module doc for what it does."""
    react = react or stop_this_process(exit_after)

    def loop() -> None:
        failing_since: float | None = None
        levels: dict[str, int] = {}
        while True:
            time.sleep(interval)
            reason = next((r for r in (refused(settings, svc) for svc in services) if r), None)
            if reason is not None:
                now = time.monotonic()
                if failing_since is None:  # one line instead of the libraries' dozens a second
                    failing_since, levels = now, _set_noisy_levels(None)
                    print(f"{name}: {reason}; stopping unless it is back within {grace:.0f}s",
                          file=sys.stderr, flush=True)
                if now - failing_since < grace:
                    continue
                break
            if failing_since is not None:
                _set_noisy_levels(levels)
                print(f"{name}: every service answers again", file=sys.stderr, flush=True)
                failing_since = None
        _quiet_exit_hooks()
        message = (f"{name}: stopping: {reason} for {grace:.0f}s. Start it again (`vitalchain "
                   f"stack up`), then rerun `vitalchain {name} run`")
        print(message, file=sys.stderr, flush=True)
        react(message)

    thread = threading.Thread(target=loop, name=f"{name}-watchdog", daemon=True)
    thread.start()
    return thread
