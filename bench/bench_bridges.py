"""One bridge vs several over device shards: readings/s draining a backlog, bridge CPU per 1,000.

For each ``--bridges`` count: a private Mosquitto and tansu on free loopback ports; the bridges
(``vitalchain bridge run --instance i --shards ...``, each its own process, shards split as
``make demo`` does, ``vitalchain.app.pipeline.bridge_plan``) subscribe once and stop, so their
persistent sessions exist; ``--devices`` devices publish ``--messages`` QoS 1 messages of
``--batch`` readings each on their shard topics (Mosquitto queues them for the bridges); then the
bridges start again and drain it. Timed from the first bridge's "connected" log line to the
moment the bridges' progress lines add up to every reading; CPU is the bridges' utime + stime
from ``/proc`` over the same span (start-up imports not counted), and Mosquitto's likewise.
Afterwards the raw topic is read back: every acknowledged reading must be there.

A backlog measures what the bridges can carry, not what a simulator in the same machine can
offer; all processes share the machine's cores, so two bridges gain only what the cores and
Mosquitto (one thread) leave them.

    .venv/bin/python bench/bench_bridges.py --bridges 1 2 --devices 16 --messages 2000 --batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_bridge_backlog import _publish, _raw_readings  # same folder: run as a script

from vitalchain.app.pipeline import bridge_plan
from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.app.stack.topology import ensure_topics
from vitalchain.app.workers import running_workers
from vitalchain.config import Settings, load_settings, to_environ
from vitalchain.devices.registry import provision_devices

_LAUNCH = "import sys; from vitalchain.app.cli import main; sys.argv[0] = 'vitalchain'; main()"


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _forwarded(log: Path) -> int:
    found = re.findall(r"forwarded=(\d+)", log.read_text())
    return int(found[-1]) if found else 0


def _start(settings: Settings, folder: Path, bridges: int, round_: str
           ) -> list[tuple[subprocess.Popen[bytes], Path]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALCHAIN_")}
    env.update(to_environ(settings))
    started = []
    for name, args in bridge_plan(settings, bridges):
        log = folder / f"{name}-{round_}.log"
        with open(log, "wb") as out:
            started.append((subprocess.Popen(
                [sys.executable, "-c", _LAUNCH, "bridge", "run", *args, "--progress-every", "0.2"],
                env=env, stdout=out, stderr=subprocess.STDOUT), log))
    return started


def _stop(processes: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    for process, _ in processes:
        process.terminate()
    for process, _ in processes:
        process.wait(60)


def _wait(what: str, done, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {what}")
        time.sleep(0.01)


def run(bridges: int, devices: int, messages: int, batch: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-bridges-") as name:
        folder = Path(name)
        mqtt_port, kafka_port = free_ports(2)
        # Few devices at full speed: lift the flood rule, this measures the bridges.
        settings = load_settings(environ={}, state_dir=folder, mqtt_port=mqtt_port,
                                 kafka_port=kafka_port, flood_rate_per_second=1e9,
                                 flood_burst=10**9)
        stack = Stack(settings)
        try:
            stack.up(("mosquitto", "kafka"))
            ensure_topics(settings)
            identities = provision_devices(settings, devices, prefix="shardbench")
            first = _start(settings, folder, bridges, "subscribe")
            _wait("bridges subscribed", lambda: sum(
                w.ready for w in running_workers(settings, "bridge")) >= bridges, 60)
            _stop(first)  # the persistent sessions and their subscriptions stay in Mosquitto
            publishers = [threading.Thread(target=_publish, args=(settings, d, messages, batch))
                          for d in identities]
            for t in publishers:
                t.start()
            for t in publishers:
                t.join()
            total = devices * messages * batch
            mosquitto = stack.pid("mosquitto")
            drain = _start(settings, folder, bridges, "drain")
            _wait("a bridge connected", lambda: any(
                "connected to" in log.read_text() for _, log in drain), 60)
            started = time.monotonic()
            cpu0 = [_cpu_seconds(p.pid) for p, _ in drain]
            mq0 = _cpu_seconds(mosquitto) if mosquitto else 0.0
            _wait(f"{total} readings forwarded",
                  lambda: sum(_forwarded(log) for _, log in drain) >= total, 600)
            elapsed = time.monotonic() - started
            cpu = [_cpu_seconds(p.pid) - c for (p, _), c in zip(drain, cpu0, strict=True)]
            mq = (_cpu_seconds(mosquitto) - mq0) if mosquitto else None
            shares = [_forwarded(log) for _, log in drain]
            _stop(drain)
            seen = _raw_readings(settings)
        finally:
            stack.down()
    expected = {(d.device_id, s) for d in identities for s in range(messages * batch)}
    return {"bridges": bridges, "shards": settings.mqtt_shards, "devices": devices,
            "batch": batch, "readings": total, "forwarded_per_bridge": shares,
            "drain_s": round(elapsed, 2), "readings_per_s": round(total / elapsed),
            "bridge_cpu_s": [round(c, 2) for c in cpu],
            "bridge_cpu_ms_per_1000_readings": round(1000 * sum(cpu) / total * 1000, 1),
            "mosquitto_cpu_ms_per_1000_readings": None if mq is None
            else round(1000 * mq / total * 1000, 1),
            "missing_readings": len(expected - set(seen)),
            "load_average_1m": round(os.getloadavg()[0], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bridges", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--devices", type=int, default=16)
    parser.add_argument("--messages", type=int, default=2000, help="messages per device")
    parser.add_argument("--batch", type=int, default=1, help="readings per message")
    args = parser.parse_args()
    for bridges in args.bridges:
        print(json.dumps(run(bridges, args.devices, args.messages, args.batch)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
