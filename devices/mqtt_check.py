"""Does Mosquitto accept these credentials? One CONNECT, for tests and diagnostics.

Caution with ``use_username_as_clientid``: the check connects *as* the user, hence under its
client id, which disconnects a live client of that user and (clean start) drops its session.
Use it only for users nobody uses at the moment.
"""

from __future__ import annotations

import time

from vitalchain.config import Settings


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
