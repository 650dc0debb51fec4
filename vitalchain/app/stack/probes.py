"""Health probes: each one proves a service is usable, not merely that its port is open."""

from __future__ import annotations

import httpx

from vitalchain.config import Settings
from vitalchain.devices.mqtt_auth import PROBE_USER, MqttCredentials
from vitalchain.errors import Unavailable


class ProbeFailed(Unavailable):
    pass


def probe_mqtt(settings: Settings, timeout: float = 3.0) -> str:
    """An authenticated MQTT CONNECT that gets CONNACK 0."""
    import paho.mqtt.client as mqtt

    password = MqttCredentials(settings.state_dir).password(PROBE_USER)
    # The broker uses the username as client id (D7): concurrent probes kick each other off,
    # harmless since each needs only its CONNACK, which comes first.
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=PROBE_USER,
                         clean_session=True)
    client.username_pw_set(PROBE_USER, password)
    try:
        client.connect(settings.host, settings.mqtt_port, keepalive=10)
    except OSError as exc:
        raise ProbeFailed(f"MQTT connect failed: {exc}") from exc
    result: dict[str, object] = {}
    client.on_connect = lambda c, u, flags, reason, props: result.setdefault("rc", reason)
    import time

    deadline = time.monotonic() + timeout
    try:
        while "rc" not in result and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    finally:
        client.disconnect()
    if "rc" not in result:
        raise ProbeFailed("no CONNACK from Mosquitto")
    reason = result["rc"]
    if getattr(reason, "is_failure", False):
        raise ProbeFailed(f"CONNACK refused: {reason}")
    return "CONNACK accepted"


def probe_kafka(settings: Settings, timeout: float = 5.0) -> str:
    """A Kafka metadata request."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                 request_timeout_ms=int(timeout * 1000) + 1000,
                                 metadata_max_age_ms=1000, connections_max_idle_ms=int(timeout * 1000) + 5000)
    except (KafkaError, OSError, ValueError) as exc:
        raise ProbeFailed(f"Kafka metadata request failed: {exc}") from exc
    try:
        topics = consumer.topics()
    except (KafkaError, OSError) as exc:
        raise ProbeFailed(f"Kafka metadata request failed: {exc}") from exc
    finally:
        consumer.close()
    return f"metadata ok, {len(topics)} topics"


def probe_influx(settings: Settings, timeout: float = 3.0) -> str:
    """InfluxDB ``/ping`` answers 204."""
    try:
        response = httpx.get(f"{settings.influx_url}/ping", timeout=timeout)
    except httpx.HTTPError as exc:
        raise ProbeFailed(f"InfluxDB /ping failed: {exc}") from exc
    if response.status_code != 204:
        raise ProbeFailed(f"InfluxDB /ping answered {response.status_code}")
    return f"ping ok, version {response.headers.get('X-Influxdb-Version', '?')}"


def probe_eth(settings: Settings, timeout: float = 3.0) -> str:
    """``eth_chainId`` answers the configured chain id."""
    try:
        response = httpx.post(settings.eth_rpc_url, timeout=timeout,
                              json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
        chain_id = int(response.json()["result"], 16)
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise ProbeFailed(f"eth_chainId failed: {exc}") from exc
    if chain_id != settings.eth_chain_id:
        raise ProbeFailed(f"chain id {chain_id}, expected {settings.eth_chain_id}")
    return f"chain id {chain_id}"
