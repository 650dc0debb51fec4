"""Anchoring cost and proof speed on a private anvil + InfluxDB.

    .venv/bin/python bench/bench_anchor.py                       # 200 devices x 1 Hz, 30 s cadence
    .venv/bin/python bench/bench_anchor.py --checkpoints 2 --proofs 50   # quicker

The ingest rate is simulated: windows are sealed straight into a fresh ledger (as the stream
does: canonical readings with salts, window headers, ``readings`` points in InfluxDB) at the
shape a real run would produce: ``devices x rate x window_seconds / partitions`` readings per
window, ``partitions x interval / window_seconds`` windows per checkpoint.  The real anchor worker
anchors each checkpoint on anvil; gas per anchored reading = gas per transaction / readings per
checkpoint.  Proofs are then built by the proof service (InfluxDB query + ledger + log) and
verified offline and against the node.  Times are wall clock (``time.perf_counter``) on this
shared 2-core machine, one process.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitalchain.anchor.deploy import deploy
from vitalchain.anchor.proofs import ProofService
from vitalchain.anchor.synthetic import SyntheticSealer, write_readings
from vitalchain.anchor.worker import Progress, run_worker
from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import load_settings
from vitalchain.core.verify import verify_bundle
from vitalchain.storage.anchors import AnchorStore
from vitalchain.storage.chainrpc import JsonRpc
from vitalchain.storage.ledger import Ledger


def _ms(samples: list[float]) -> str:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, int(0.95 * len(samples)))]
    return f"median {statistics.median(samples) * 1e3:.2f} ms, p95 {p95 * 1e3:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--rate", type=float, default=1.0, help="readings/s per device")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds per checkpoint")
    parser.add_argument("--window-seconds", type=float, default=10.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--proofs", type=int, default=200)
    args = parser.parse_args()

    per_window = round(args.devices * args.rate * args.window_seconds / args.partitions)
    windows_per_cp = max(1, round(args.partitions * args.interval / args.window_seconds))
    with tempfile.TemporaryDirectory(prefix="bench-anchor-") as folder:
        influx, eth, rpc = free_ports(3)
        settings = load_settings(environ={}, state_dir=Path(folder), influx_port=influx,
                                 eth_port=eth, influx_rpc_port=rpc,
                                 anchor_every_windows=windows_per_cp,
                                 anchor_interval_seconds=3600.0, anchor_confirmations=1)
        stack = Stack(settings)
        stop = threading.Event()
        try:
            stack.up(("influxdb", "anvil"))
            settings = settings.with_overrides(
                anchor_contract=deploy(settings, record=False).address)
            ledger = Ledger(settings.ledger_target)
            sealer = SyntheticSealer(ledger, devices=args.devices)
            def show(progress: Progress) -> None:
                for event in progress.events:
                    print(f"  worker: {event}", file=sys.stderr)

            worker = threading.Thread(target=run_worker, args=(settings, stop, show),
                                      kwargs={"poll_interval": 0.1}, daemon=True)
            readings = []
            seal_s = 0.0
            store = AnchorStore(settings.ledger_target)
            for n in range(1, args.checkpoints + 1):
                started = time.perf_counter()
                batch = [sealer.seal(per_window) for _ in range(windows_per_cp)]
                write_readings(settings, [(r, h) for _, r, h in batch])
                seal_s += time.perf_counter() - started
                readings += [r for _, rs, _ in batch for r in rs]
                if n == 1:  # started once the first checkpoint's windows exist, so that
                    worker.start()  # every checkpoint is exactly `windows_per_cp` windows
                target = n * windows_per_cp
                deadline = time.monotonic() + 120
                while True:
                    cp = store.latest(settings.anchor_contract, "anchored")
                    if cp is not None and cp.size == target:
                        break
                    if time.monotonic() > deadline:
                        print(stack.log_path("anvil").read_text()[-2000:], file=sys.stderr)
                        raise SystemExit(f"checkpoint {target} not anchored in time")
                    time.sleep(0.1)
            stop.set()
            worker.join(30)
            anchored = store.checkpoints(settings.anchor_contract, "anchored")
            gas = [cp.gas_used or 0 for cp in anchored]
            store.close()

            sample = random.Random(1).sample(readings, min(args.proofs, len(readings)))
            gen, offline, online = [], [], []
            with ProofService(settings) as service:
                service.proof(sample[0]["device_id"], sample[0]["seq"])  # warm the log cache
                for r in sample:
                    t0 = time.perf_counter()
                    bundle = service.proof(r["device_id"], r["seq"]).bundle
                    t1 = time.perf_counter()
                    assert verify_bundle(bundle).status == "valid"
                    t2 = time.perf_counter()
                    assert verify_bundle(bundle, JsonRpc(settings.eth_rpc_url)).status == "valid"
                    t3 = time.perf_counter()
                    gen.append(t1 - t0)
                    offline.append(t2 - t1)
                    online.append(t3 - t2)
            size = len(json.dumps(bundle))
            ledger.close()
        finally:
            stop.set()
            stack.down()

    per_cp = per_window * windows_per_cp
    print(f"ingest shape: {args.devices} devices x {args.rate:g} Hz, checkpoint every "
          f"{args.interval:g} s -> {windows_per_cp} windows x {per_window} readings = "
          f"{per_cp} readings per checkpoint")
    print(f"sealed {len(readings)} readings into {windows_per_cp * args.checkpoints} windows "
          f"({seal_s:.2f} s incl. InfluxDB writes)")
    print(f"anchor txs: {len(gas)}, gas per tx {gas} (first anchor pays the fresh-slot costs)")
    steady = gas[-1]
    print(f"gas per anchored reading: {steady / per_cp:.2f} (steady state, {steady} gas / "
          f"{per_cp} readings); per window: {steady / windows_per_cp:.0f}")
    print(f"proof generation ({len(gen)} proofs, InfluxDB + ledger): {_ms(gen)}")
    print(f"verification offline: {_ms(offline)}")
    print(f"verification with --rpc (anvil, 4 JSON-RPC calls): {_ms(online)}")
    print(f"bundle size: {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
