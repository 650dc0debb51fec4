"""Make a running local Mosquitto reread its password file and ACL after users changed.

Mosquitto reads both files only at start and on SIGHUP, and the SIGHUP is handled
asynchronously: a caller that connects right after sending it may still be refused. So the
reload waits, when given a user, until that user's CONNECT is accepted.

Caution with ``use_username_as_clientid``: the check connects *as* the user, hence under its
client id, which would disconnect a live client of that user and (clean start) drop its
session. Pass only users that nobody uses yet (just created).
"""

from __future__ import annotations

import os
import signal
import time

from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import Settings
from vitalchain.errors import Unavailable


class ReloadFailed(Unavailable):
    """Mosquitto still refuses the new user after the reload; the message says why."""


def connack(settings: Settings, username: str, password: str, timeout: float = 3.0) -> str:
    """Try one MQTT 5 CONNECT (clean start, no session kept); ``"accepted"``, the broker's
    refusal reason, or the socket error."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username,
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    result: dict[str, object] = {}
    client.on_connect = lambda c, u, flags, reason, props: result.setdefault("rc", reason)
    try:
        client.connect(settings.host, settings.mqtt_port, keepalive=10, clean_start=True)
    except OSError as exc:
        return f"connect failed: {exc}"
    deadline = time.monotonic() + timeout
    try:
        while "rc" not in result and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break
    finally:
        client.disconnect()
    if "rc" not in result:
        return "no CONNACK"
    reason = result["rc"]
    return str(reason) if getattr(reason, "is_failure", False) else "accepted"


def reload_mosquitto(settings: Settings, new_user: tuple[str, str] | None = None,
                     timeout: float = 15.0) -> bool:
    """SIGHUP the local stack's Mosquitto; with ``new_user`` (name, password), return once it is
    accepted. False when Mosquitto is not running (it reads the files when it starts)."""
    pid = Stack(settings).pid("mosquitto")
    if pid is None:
        return False
    os.kill(pid, signal.SIGHUP)
    if new_user is None:
        return True
    user, password = new_user
    deadline = time.monotonic() + timeout
    outcome = "not tried"
    while time.monotonic() < deadline:
        outcome = connack(settings, user, password)
        if outcome == "accepted":
            return True
        time.sleep(0.1)
    raise ReloadFailed(f"Mosquitto (pid {pid}) still refuses new user {user!r} {timeout:.0f}s "
                       f"after reload: {outcome}")
