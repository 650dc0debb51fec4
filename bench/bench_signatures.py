"""What device signatures cost: signing per message on the simulator, verifying per message on the bridge.

    .venv/bin/python bench/bench_signatures.py [--messages 3000] [--rounds 7] [--pipeline-ms-per-1000 X]

For batches of 1, 5 and 10 readings, CPU time (``time.process_time``) per MQTT message, median
over interleaved rounds (A B A B ...) so the comparison holds on a noisy shared machine:

- **sign**: the simulator's ``encode(readings, key)`` minus ``encode(readings)`` (JCS of
  ``{"key_id", "readings"}``, Ed25519 sign, base64url, the bigger JSON), and ``sign_message`` alone;
- **verify**: the bridge's ``validate(..., signatures=...)`` of a signed message minus ``validate``
  of the same readings unsigned (the keyring lookup, JCS rebuild, Ed25519 verify), and
  ``check_signature`` alone.

``--pipeline-ms-per-1000`` / ``--simulator-ms-per-1000``: the pipeline's (bridge + Kafka + stream +
InfluxDB) and the simulator's CPU per 1,000 readings stored, from a ``bench/bench_pipeline.py`` row
(signed, at the batch size of interest); the script then prints the verify cost per reading as a
share of the pipeline's CPU and the sign cost per reading as a share of the simulator's. Batch
verification is not measured: neither ``cryptography`` nor PyNaCl offers Ed25519 batch
verification (docs/DECISIONS.md D26).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitalchain.core.integrity.devicekeys import (
    check_signature,
    generate_private_key,
    key_id_of,
    load_public_key,
    public_key_bytes,
    sign_message,
)
from vitalchain.core.payload.validation import validate
from vitalchain.devices.firmware import encode
from vitalchain.devices.keys import SigningKey

T0 = 1_767_225_600_000_000
NOW = T0 + 3_600_000_000


def batch(n: int, seq0: int) -> list[dict]:
    return [{"device_id": "wearable-00001", "patient_id": "patient-58fc52e36f", "seq": seq0 + i,
             "ts_us": T0 + (seq0 + i) * 200_000,
             "vitals": {"hr": 70 + i % 30, "spo2": 97, "rr": 15, "temp_c": 36.8, "sys": 121,
                        "dia": 79}} for i in range(n)]


def per_call_us(fn: Callable[[object], object], items: list) -> float:
    start = time.process_time()
    for item in items:
        fn(item)
    return (time.process_time() - start) / len(items) * 1e6


def measure(size: int, messages: int, rounds: int) -> dict[str, float]:
    key = generate_private_key()
    public = public_key_bytes(key)
    kid = key_id_of(public)
    signing = SigningKey(kid, key)
    loaded = load_public_key(public)
    msgs = [batch(size, i * size) for i in range(messages)]
    signed_payloads = [encode(m, signing) for m in msgs]
    plain_payloads = [encode(m) if size > 1 else json.dumps({"readings": m}).encode() for m in msgs]
    sigs = [json.loads(p)["sig"] for p in signed_payloads]

    def hook(device_id: str, key_id: str, sig: object, readings: list) -> str | None:
        check_signature(loaded, key_id, sig, readings)
        return None

    def check(payload: bytes, signatures: object) -> None:
        out = validate("vitals/wearable-00001", payload, NOW, max_payload_bytes=65536,
                       max_future_seconds=1e9, signatures=signatures)  # type: ignore[arg-type]
        assert len(out.readings) == size and not out.rejections

    series: dict[str, list[float]] = {k: [] for k in (
        "encode_plain", "encode_signed", "sign_only", "validate_plain", "validate_signed",
        "verify_only")}
    for _ in range(rounds):
        series["encode_plain"].append(per_call_us(lambda m: encode(m), msgs))
        series["encode_signed"].append(per_call_us(lambda m: encode(m, signing), msgs))
        series["sign_only"].append(per_call_us(lambda m: sign_message(key, kid, m), msgs))
        series["validate_plain"].append(per_call_us(lambda p: check(p, None), plain_payloads))
        series["validate_signed"].append(per_call_us(lambda p: check(p, hook), signed_payloads))
        series["verify_only"].append(per_call_us(
            lambda i: check_signature(loaded, kid, sigs[i], msgs[i]), list(range(messages))))
    med = {k: statistics.median(v) for k, v in series.items()}
    med["sign_added"] = med["encode_signed"] - med["encode_plain"]
    med["verify_added"] = med["validate_signed"] - med["validate_plain"]
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--pipeline-ms-per-1000", type=float, default=None,
                        help="pipeline CPU ms per 1,000 readings (a bench_pipeline row)")
    parser.add_argument("--simulator-ms-per-1000", type=float, default=None,
                        help="simulator CPU ms per 1,000 readings (the same row)")
    args = parser.parse_args()
    print(f"{args.messages} messages x {args.rounds} interleaved rounds, CPU us per MQTT message "
          "(median)")
    print(f"{'batch':>5} {'sign':>7} {'encode+':>8} {'verify':>7} {'validate+':>9} "
          f"{'encode+/rdg':>11} {'validate+/rdg':>13} {'% simulator':>11} {'% pipeline':>10}")
    for size in (1, 5, 10):
        m = measure(size, args.messages, args.rounds)
        sign_r, verify_r = m["sign_added"] / size, m["verify_added"] / size
        sim = f"{sign_r / args.simulator_ms_per_1000 * 100:.1f}" if args.simulator_ms_per_1000 else "-"
        pipe = f"{verify_r / args.pipeline_ms_per_1000 * 100:.1f}" if args.pipeline_ms_per_1000 else "-"
        print(f"{size:>5} {m['sign_only']:>7.1f} {m['sign_added']:>8.1f} {m['verify_only']:>7.1f} "
              f"{m['verify_added']:>9.1f} {sign_r:>11.1f} {verify_r:>13.1f} {sim:>11} {pipe:>10}")
    print("sign / verify: Ed25519 over JCS alone; encode+ / validate+: what the simulator's encode "
          "and the bridge's validate cost more per message when signed")


if __name__ == "__main__":
    main()
