"""Add and remove MQTT users in the running local Mosquitto, through its dynamic-security plugin.

No SIGHUP: the admin user publishes commands to ``$CONTROL/dynamic-security/v1`` and the plugin
answers on ``.../response`` once they are in effect, so a device created here can connect as soon
as this returns, and no persistent session is touched (Mosquitto #2934, D12). When nothing
listens on the MQTT port (connection refused) Mosquitto is not running and there is nothing to
do: the local one renders its configuration from the credential store when it starts
(``vitalchain.app.stack.services``). A broker that answers but refuses the admin is an error,
never a silent skip.

The admin's client id is its username (``use_username_as_clientid``), so two admin sessions at once
would kick each other off: a lock file serialises them between processes. Passwords travel only
in the commands, over loopback to the local broker, and are never logged (the plugin itself logs
``password=*****``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from typing import Any

from vitalchain.config import Settings
from vitalchain.devices import mqtt_dynsec
from vitalchain.devices.mqtt_auth import ADMIN_USER, MqttCredentials
from vitalchain.errors import Refused, Unavailable

# Per control message. The plugin of Mosquitto 2.0.11 rewrites its whole JSON file after every
# command, so a command costs time in proportion to the users it already has, and the broker
# serves nobody while it works through one message: small messages bound that pause (measured in
# bench/bench_provision.py) and keep each answer well inside the timeout.
USERS_PER_MESSAGE = 10
ANSWER_TIMEOUT_S = 60.0
_TOLERATED = ("Client already exists", "Role already exists", "Client not found",
              "Role not found")


class AdminFailed(Refused):
    """The broker refused or did not answer an admin command; the message says which."""


class BrokerNotRunning(AdminFailed, Unavailable):
    """Nothing listens on the MQTT port."""


class DynsecAdmin:
    """One MQTT 5 session as the admin user, sending command lists and awaiting each answer."""

    def __init__(self, settings: Settings, password: str,
                 timeout: float = ANSWER_TIMEOUT_S) -> None:
        import paho.mqtt.client as mqtt

        self.timeout = timeout
        self._responses: list[dict[str, Any]] = []
        self._events: dict[str, Any] = {}
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=ADMIN_USER,
                             protocol=mqtt.MQTTv5)
        client.username_pw_set(ADMIN_USER, password)
        if settings.mqtt_tls_ca_file:
            client.tls_set(ca_certs=settings.mqtt_tls_ca_file)
        client.on_connect = lambda c, u, f, reason, p: self._events.setdefault("connack", reason)
        client.on_subscribe = lambda c, u, mid, codes, p: self._events.setdefault("suback", codes)
        client.on_disconnect = lambda c, u, f, reason, p: self._events.setdefault("gone", reason)
        client.on_message = self._on_message
        self._client = client
        try:
            client.connect(settings.host, settings.mqtt_port, keepalive=30, clean_start=True)
        except ConnectionRefusedError as exc:
            raise BrokerNotRunning(f"nothing listens on {settings.host}:{settings.mqtt_port}") \
                from exc
        except OSError as exc:
            raise AdminFailed(f"cannot reach Mosquitto for provisioning: {exc}") from exc
        self._await(lambda: "connack" in self._events, "CONNACK")
        if self._events["connack"].is_failure:
            raise AdminFailed(f"Mosquitto refused the admin user: {self._events['connack']}")
        client.subscribe(mqtt_dynsec.RESPONSE_TOPIC, qos=1)
        self._await(lambda: "suback" in self._events, "SUBACK")
        if any(code.is_failure for code in self._events["suback"]):
            raise AdminFailed(f"Mosquitto refused the admin's subscription to "
                              f"{mqtt_dynsec.RESPONSE_TOPIC}; is the dynamic-security plugin on?")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with contextlib.suppress(ValueError):
            self._responses.append(json.loads(message.payload))

    def _await(self, done: Any, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not done():
            if "gone" in self._events:
                raise AdminFailed(f"Mosquitto closed the admin session waiting for {what}: "
                                  f"{self._events['gone']}")
            if time.monotonic() > deadline:
                raise AdminFailed(f"no {what} from Mosquitto within {self.timeout:.0f}s")
            self._client.loop(timeout=0.05)

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send one command list; the plugin's answer per command (same order)."""
        seen = len(self._responses)
        self._client.publish(mqtt_dynsec.CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
        self._await(lambda: len(self._responses) > seen, "answer to the admin commands")
        answers = self._responses[seen].get("responses", [])
        if len(answers) != len(commands):
            raise AdminFailed(f"{len(commands)} admin commands got {len(answers)} answers")
        return list(answers)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()


@contextlib.contextmanager
def admin_session(settings: Settings) -> Iterator[DynsecAdmin]:
    """An admin session, alone among this state folder's processes."""
    creds = MqttCredentials(settings.state_dir)
    password = creds.admin_password()
    with open(creds.admin_path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        admin = DynsecAdmin(settings, password)
        try:
            yield admin
        finally:
            admin.close()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _apply(settings: Settings, batches: list[list[dict[str, Any]]]) -> bool:
    try:
        with admin_session(settings) as admin:  # BrokerNotRunning comes from its connect only
            for commands in batches:
                for command, answer in zip(commands, admin.run(commands), strict=True):
                    error = answer.get("error")
                    if error and error not in _TOLERATED:
                        name = command.get("username") or command.get("rolename")
                        raise AdminFailed(f"Mosquitto refused {command['command']} {name!r}: "
                                          f"{error}")
    except BrokerNotRunning:
        return False
    return True


def _batches(users: list[str], commands_of: Any) -> list[list[dict[str, Any]]]:
    return [[c for user in users[i:i + USERS_PER_MESSAGE] for c in commands_of(user)]
            for i in range(0, len(users), USERS_PER_MESSAGE)]


def add_to_broker(settings: Settings, users: dict[str, str]) -> bool:
    """Create these users in the running local Mosquitto; users it has already are kept as they
    are (the store never changes a password). False when it is not running."""
    names = sorted(users)
    return _apply(settings, _batches(names, lambda u: mqtt_dynsec.create_commands(u, users[u], settings.mqtt_shards)))


def remove_from_broker(settings: Settings, users: list[str]) -> bool:
    """Delete these users (the plugin disconnects them). False when Mosquitto is not running."""
    return _apply(settings, _batches(sorted(users), mqtt_dynsec.delete_commands))
