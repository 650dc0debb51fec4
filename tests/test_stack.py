"""The local stack: each real service is usable, and up/down/status behave as documented."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaProducer

from tests.common_support import wait_until
from vitalchain.app.stack.supervisor import ServiceStartError, Stack, pid_alive
from vitalchain.devices.mqtt_admin import add_to_broker
from vitalchain.devices.mqtt_auth import BRIDGE_USER, MqttCredentials
from vitalchain.storage.influx import InfluxClient, Point, quote_string


def _stack_env(stack: Stack) -> dict[str, str]:
    s = stack.settings
    env = dict(os.environ)
    env.update({"VITALCHAIN_STATE_DIR": str(s.state_dir), "VITALCHAIN_MQTT_PORT": str(s.mqtt_port),
                "VITALCHAIN_KAFKA_PORT": str(s.kafka_port), "VITALCHAIN_INFLUX_PORT": str(s.influx_port),
                "VITALCHAIN_ETH_PORT": str(s.eth_port),
                "VITALCHAIN_INFLUX_RPC_PORT": str(s.influx_rpc_port)})
    return env


def _vitalchain(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vitalchain", *args], env=_stack_env(stack),
                          capture_output=True, text=True, timeout=120)


def _connected_client(stack: Stack, user: str, client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.username_pw_set(user, MqttCredentials(stack.settings.state_dir).password(user))
    connected: list[object] = []
    client.on_connect = lambda c, u, f, reason, p: connected.append(reason)
    client.connect(stack.settings.host, stack.settings.mqtt_port)
    client.loop_start()
    wait_until(lambda: connected, 10, f"CONNACK for {user}")
    assert not getattr(connected[0], "is_failure", False), connected[0]
    return client


def test_mqtt_publish_and_receive_with_credentials(stack: Stack) -> None:
    device = f"stack-dev-{uuid.uuid4().hex[:8]}"
    creds = MqttCredentials(stack.settings.state_dir)
    # The running Mosquitto gets the user through its dynamic-security plugin (no SIGHUP, D12).
    assert add_to_broker(stack.settings, {device: creds.add_users({device: None})[device]})

    received: list[bytes] = []
    bridge = _connected_client(stack, BRIDGE_USER, f"bridge-{device}")
    subscribed: list[int] = []
    bridge.on_subscribe = lambda c, u, mid, codes, p: subscribed.append(mid)
    bridge.on_message = lambda c, u, msg: received.append(msg.payload)
    bridge.subscribe(f"vitals/{device}", qos=1)
    wait_until(lambda: subscribed, 10, "SUBACK")

    publisher = _connected_client(stack, device, device)  # accepted at once: no reload to await
    publisher.publish(f"vitals/{device}", b"hello", qos=1).wait_for_publish(10)
    publisher.loop_stop()
    publisher.disconnect()
    wait_until(lambda: b"hello" in received, 10, "the message at the subscriber")
    bridge.loop_stop()
    bridge.disconnect()


def test_mqtt_refuses_anonymous_and_wrong_password(stack: Stack) -> None:
    for user, password in ((None, None), (BRIDGE_USER, "wrong")):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"intruder-{uuid.uuid4().hex[:6]}")
        if user:
            client.username_pw_set(user, password)
        answers: list[object] = []
        client.on_connect = lambda c, u, f, reason, p, answers=answers: answers.append(reason)
        client.connect(stack.settings.host, stack.settings.mqtt_port)
        client.loop_start()
        wait_until(lambda answers=answers: answers, 10, "CONNACK")
        client.loop_stop()
        assert getattr(answers[0], "is_failure", False), f"{user!r} was let in: {answers[0]}"


async def test_kafka_consumer_group_as_faust_uses_it(stack: Stack) -> None:
    """Faust consumes through aiokafka consumer groups: check that path against tansu."""
    from aiokafka import AIOKafkaConsumer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"stack-check-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 2, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap, acks="all")
    sent = {f"m{i}".encode() for i in range(20)}
    for value in sent:
        producer.send(topic, key=value[-1:], value=value)
    producer.flush(30)
    producer.close()

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=stack.settings.kafka_bootstrap,
                                group_id=f"g-{topic}", auto_offset_reset="earliest",
                                enable_auto_commit=False, rebalance_timeout_ms=3000,
                                session_timeout_ms=6000, heartbeat_interval_ms=1000)
    await consumer.start()
    got: set[bytes] = set()
    try:
        async with asyncio.timeout(60):
            while got != sent:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    got.update(r.value for r in records)
        await consumer.commit()
        committed = [await consumer.committed(tp) for tp in consumer.assignment()]
    finally:
        await consumer.stop()
    assert got == sent
    assert sum(c or 0 for c in committed) == len(sent)


async def test_influx_write_and_query(stack: Stack) -> None:
    async with InfluxClient(stack.settings) as influx:
        device = f"dev \"odd\", name={uuid.uuid4().hex[:4]}"
        await influx.write([Point("stack_check", {"device": device}, {"hr": 71.5, "seq": 3, "note": 'a "b"'},
                                  1_700_000_000_000_000_000)])
        rows = await influx.query(
            f"SELECT * FROM stack_check WHERE device = {quote_string(device)}")
        assert rows == [{"time": 1_700_000_000_000_000_000, "device": device, "hr": 71.5,
                         "note": 'a "b"', "seq": 3}]
        bound = await influx.query("SELECT hr FROM stack_check WHERE device = $d", {"d": device})
        assert [r["hr"] for r in bound] == [71.5]


async def test_influx_down_gives_a_clear_error(stack: Stack) -> None:
    from vitalchain.app.stack.ports import free_port
    from vitalchain.storage.influx import InfluxUnavailable

    settings = stack.settings.with_overrides(influx_port=free_port())
    client = InfluxClient(settings, retries=1, backoff_s=0.01)
    with pytest.raises(InfluxUnavailable, match=rf"127\.0\.0\.1:{settings.influx_port}"):
        await client.write([Point("x", {}, {"v": 1.0})])
    await client.close()


def test_anvil_accepts_a_transaction(stack: Stack) -> None:
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(stack.settings.eth_rpc_url))
    sender, receiver = w3.eth.accounts[0], w3.eth.accounts[1]
    before = w3.eth.get_balance(receiver)
    tx = w3.eth.send_transaction({"from": sender, "to": receiver, "value": 12345})
    receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    assert receipt["status"] == 1
    assert w3.eth.get_balance(receiver) == before + 12345


def test_status_names_the_killed_service_and_down_leaves_nothing(fresh_stack) -> None:
    stack = fresh_stack()
    pids = {name: stack.pid(name) for name in ("mosquitto", "kafka", "influxdb", "anvil")}
    assert all(pids.values())
    healthy = _vitalchain(stack, "stack", "status")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr

    stack.kill("kafka")
    report = _vitalchain(stack, "stack", "status")
    assert report.returncode == 1
    lines = {line.split()[0]: line for line in report.stdout.splitlines()}
    assert "DOWN" in lines["kafka"]
    assert all("healthy" in lines[name] for name in ("mosquitto", "influxdb", "anvil"))

    # `up` again restarts only what is missing, then `down` via the CLI leaves no process.
    again = _vitalchain(stack, "stack", "up")
    assert again.returncode == 0, again.stderr
    assert stack.pid("mosquitto") == pids["mosquitto"]
    down = _vitalchain(stack, "stack", "down")
    assert down.returncode == 0, down.stderr
    survivors = [p for p in [*list(pids.values()), stack.pid("kafka")] if p and pid_alive(p)]
    assert survivors == []
    state = str(stack.settings.state_dir)
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_mentions(p, state)]
    assert leftovers == []


def _cmdline_mentions(pid: str, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False


def test_anvil_keeps_chain_state_across_restarts(fresh_stack) -> None:
    from web3 import Web3

    stack = fresh_stack(("anvil",))
    w3 = Web3(Web3.HTTPProvider(stack.settings.eth_rpc_url))
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": w3.eth.accounts[2], "value": 777})
    w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    balance = w3.eth.get_balance(w3.eth.accounts[2])
    stack.restart("anvil")
    assert w3.eth.get_transaction_receipt(tx)["status"] == 1
    assert w3.eth.get_balance(w3.eth.accounts[2]) == balance


def test_a_service_that_cannot_start_is_named_with_its_log(fresh_stack, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        from tests.conftest import stack_settings

        stack = Stack(stack_settings(tmp_path / "st", influx_port=port))
        try:
            with pytest.raises(ServiceStartError) as failure:
                stack.up(("influxdb",), deadline_s=15)
        finally:
            stack.down()
    message = str(failure.value)
    assert "influxdb" in message
    assert str(stack.log_path("influxdb")) in message


def test_settings_come_from_the_environment_and_the_state_file(tmp_path: Path) -> None:
    from vitalchain.config import ConfigError, load_settings, record_setting

    settings = load_settings(environ={"VITALCHAIN_STATE_DIR": str(tmp_path), "VITALCHAIN_MQTT_PORT": "1999"})
    assert settings.mqtt_port == 1999
    record_setting(settings, "anchor_contract", "0xabc")
    assert load_settings(environ={"VITALCHAIN_STATE_DIR": str(tmp_path)}).anchor_contract == "0xabc"
    env = {"VITALCHAIN_STATE_DIR": str(tmp_path), "VITALCHAIN_ANCHOR_CONTRACT": "0xdef"}
    assert load_settings(environ=env).anchor_contract == "0xdef"
    with pytest.raises(ConfigError, match="VITALCHAIN_MQTT_PORT"):
        load_settings(environ={"VITALCHAIN_STATE_DIR": str(tmp_path), "VITALCHAIN_MQTT_PORT": "x"})
    assert json.loads(json.dumps(str(settings.state_dir)))


def test_influxd_runs_with_the_stacks_go_runtime_settings(stack: Stack) -> None:
    """D53: the stack's influxd collects garbage less often (GOGC) within a memory bound
    (GOMEMLIMIT); a value set in the stack's own environment is kept instead."""
    from vitalchain.app.stack.services import INFLUXD_GO_ENV

    pid = stack.pid("influxdb")
    assert pid is not None
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    for name, value in INFLUXD_GO_ENV:
        assert environ.get(name) == os.environ.get(name, value)


def test_a_go_setting_in_the_stacks_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from vitalchain.app.stack.services import service
    from vitalchain.app.stack.supervisor import service_env

    monkeypatch.setenv("GOGC", "150")
    monkeypatch.delenv("GOMEMLIMIT", raising=False)
    env = service_env(service("influxdb"))
    assert env["GOGC"] == "150"
    assert env["GOMEMLIMIT"] == dict(service("influxdb").env)["GOMEMLIMIT"]
    assert "GOMEMLIMIT" not in service_env(service("mosquitto"))  # influxd's own, no one else's
