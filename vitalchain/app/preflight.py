"""Before a worker starts: are the services it needs there at all?

Without this check a worker started before ``vitalchain stack up`` (or after ``stack down``) spun on
connection errors: the bridge printed two raw kafka ``ECONNREFUSED`` lines a second forever and
never said what to do. The workers themselves keep riding out *outages* (a Kafka restart under a
running bridge loses nothing, tests/test_bridge_resilience.py); what is refused here is starting
against a service that does not answer at all, with one line that names the service, where it was
looked for and the fix.

The check is a TCP connect per service (and InfluxDB's ``/ping``, the chain's ``eth_chainId``, both
fast): a full Kafka metadata probe takes 30 s to give up on a closed port.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from vitalchain.app.stack.probes import ProbeFailed, probe_eth, probe_influx
from vitalchain.config import Settings
from vitalchain.errors import Unavailable


class ServiceUnreachable(Unavailable):
    """A service a command needs does not answer; the message names it and the fix."""


def _tcp(host: str, port: int, timeout: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise ProbeFailed(exc.strerror or str(exc)) from None


def _mqtt(settings: Settings, timeout: float) -> str:
    _tcp(settings.mqtt_broker_host, settings.mqtt_port, timeout)
    return settings.mqtt_url


def _kafka(settings: Settings, timeout: float) -> str:
    errors = []
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _tcp(host or settings.host, int(port), timeout)
            return settings.kafka_bootstrap
        except (ProbeFailed, ValueError) as exc:
            errors.append(str(exc))
    raise ProbeFailed("; ".join(errors))


def _influx(settings: Settings, timeout: float) -> str:
    probe_influx(settings, timeout)
    return settings.influx_url


def _eth(settings: Settings, timeout: float) -> str:
    probe_eth(settings, timeout)
    return settings.eth_rpc_url


# service -> (what the user knows it as, where it is looked for, the check, the setting to change)
SERVICES: dict[str, tuple[str, Callable[[Settings], str], Callable[[Settings, float], str], str]] = {
    "mqtt": ("Mosquitto (MQTT)", lambda s: s.mqtt_url, _mqtt, "VITALCHAIN_MQTT_HOST/_PORT"),
    "kafka": ("Kafka", lambda s: s.kafka_bootstrap, _kafka, "VITALCHAIN_KAFKA_SERVERS"),
    "influxdb": ("InfluxDB", lambda s: s.influx_url, _influx, "VITALCHAIN_INFLUX_ENDPOINT"),
    "eth": ("the Ethereum node", lambda s: s.eth_rpc_url, _eth, "VITALCHAIN_ETH_RPC"),
}


def require(settings: Settings, *services: str, timeout: float = 3.0) -> None:
    """Raise :class:`ServiceUnreachable` for the first of ``services`` that does not answer."""
    for name in services:
        label, where, check, setting = SERVICES[name]
        try:
            check(settings, timeout)
        except (ProbeFailed, OSError) as exc:
            reason = str(exc).split(": ", 1)[-1] if isinstance(exc, ProbeFailed) else str(exc)
            raise ServiceUnreachable(
                f"{label} does not answer at {where(settings)} ({reason}): start the local stack "
                f"with `vitalchain stack up` (`vitalchain stack status` shows what runs), or set "
                f"{setting} to yours") from None
