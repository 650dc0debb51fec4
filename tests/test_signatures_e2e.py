"""Issue #13 on real services: signed readings through Mosquitto, the bridge, Kafka, the stream,
InfluxDB and the ledger to a ``vitalchain-proof/2`` bundle; hostile messages dead-lettered
``bad_signature``; rotation and revocation; an operator's injected reading fails
``device-signature``. Signatures are ``required`` here (the default of new installs)."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.bridge_support import Device, Records, make_reading, running_bridge
from tests.common_support import wait_until
from tests.stream_support import Worker, produce
from vitalchain.anchor.proofs import ProofAltered, ProofService
from vitalchain.config import Settings
from vitalchain.core.integrity import build_bundle
from vitalchain.core.integrity.devicekeys import (
    generate_private_key,
    key_id_of,
    public_key_bytes,
    sign_message,
)
from vitalchain.core.verify import verify_document
from vitalchain.devices.firmware import encode
from vitalchain.devices.registry import identities, provision_devices, revoke_key, rotate_key
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.readings import point_time_ns, reading_point

pytestmark = pytest.mark.e2e


def _steps(bundle: dict[str, Any]) -> tuple[str, dict[str, str]]:
    report = verify_document(bundle)
    return report.status, {s.step: s.to_dict()["status"] for s in report.steps}


def _sealed(settings: Settings) -> int:
    with Ledger(settings.ledger_path) as ledger:
        return ledger.reading_count()


def test_signed_pipeline_hostile_input_rotation_revocation_and_injection(
        isolated: Settings, tmp_path: Path) -> None:
    settings = isolated.with_overrides(device_signatures="required", window_seconds=1.0,
                                       idle_seal_seconds=1.0)
    prefix = f"sig{uuid.uuid4().hex[:6]}"
    [ident, other] = provision_devices(settings, 2, prefix=prefix)
    assert ident.signing is not None and other.signing is not None
    dev = ident.device_id
    first_key = ident.signing
    readings = [make_reading(dev, seq) for seq in (1, 2, 3)]
    replayed = copy.deepcopy(readings)
    for r in replayed:
        r["seq"] += 100  # the signed message re-sent under other seqs
    good = json.loads(encode(readings, first_key))
    other_sig = sign_message(other.signing.private_key, other.signing.key_id, [make_reading(dev, 6)])
    hostile = {
        "unsigned": json.dumps(make_reading(dev, 4)).encode(),
        "padded_signature": json.dumps({**json.loads(encode([make_reading(dev, 5)], first_key)),
                                        "sig": good["sig"] + "=="}).encode(),
        "not_base64": json.dumps({**json.loads(encode([make_reading(dev, 5)], first_key)),
                                  "sig": "*" * 86}).encode(),
        "other_devices_key": json.dumps({"key_id": other.signing.key_id, "sig": other_sig,
                                         "readings": [make_reading(dev, 6)]}).encode(),
        "unknown_key_id": json.dumps({**json.loads(encode([make_reading(dev, 7)], first_key)),
                                      "key_id": "0" * 32}).encode(),
        "replay_other_seq": json.dumps({**good, "readings": replayed}).encode(),
    }
    device = Device(settings, dev, ident.password)
    dlq = Records(settings, settings.dlq_topic)
    worker = Worker(settings, "sig", tmp_path)
    try:
        with running_bridge(settings) as bridge:
            device.publish(encode(readings, first_key))
            for payload in hostile.values():
                device.publish(payload)
            device.wait_acked(20)
            wait_until(lambda: bridge.counters.forwarded == 3
                       and bridge.counters.dead_lettered["bad_signature"] == len(hostile), 30,
                       "3 forwarded, every hostile message dead-lettered")
            letters = [v for _k, v in dlq.wait_for(len(hostile), 20, "dead letters")]
            assert all(v["reason"] == "bad_signature" for v in letters), letters
            details = " | ".join(v["detail"] for v in letters)
            for expected in ("not signed", "base64url", "not registered for device",
                             "does not verify"):
                assert expected in details, details

            # Rotation: the new key signs; the old (now revoked) key is refused.
            rotate_key(settings, dev)
            new_key = identities(settings, [dev])[0].signing
            assert new_key is not None and new_key.key_id != first_key.key_id
            device.publish(encode([make_reading(dev, 10), make_reading(dev, 11)], new_key))
            device.publish(encode([make_reading(dev, 12)], first_key))
            # Revocation: the device's messages are refused from the next one on.
            device.wait_acked(20)
            wait_until(lambda: bridge.counters.forwarded == 5
                       and bridge.counters.dead_lettered["bad_signature"] == len(hostile) + 1,
                       30, "rotated key forwarded, old key refused")
            revoke_key(settings, dev)
            device.publish(encode([make_reading(dev, 13)], new_key))
            device.wait_acked(20)
            wait_until(lambda: bridge.counters.dead_lettered["bad_signature"] == len(hostile) + 2,
                       30, "revoked key refused")
            assert bridge.counters.forwarded == 5
            late = [v for _k, v in dlq.wait_for(len(hostile) + 2, 20, "dead letters")][-2:]
            assert all("revoked" in v["detail"] for v in late), late

        # The operator injects a reading the device never sent straight into Kafka, dressed in
        # the device's genuine signed message (copied from the first one).
        forged = make_reading(dev, 20, hr=150)
        produce(settings, [{**forged, "signed": {
            "at": [forged["ts_us"], 20], "key_id": first_key.key_id, "sig": good["sig"],
            "readings": good["readings"]}}])
        wait_until(lambda: _sealed(settings) == 6, 60, f"6 readings sealed:\n{worker.tail()}")
    finally:
        worker.kill()
        device.close()
        dlq.close()

    with ProofService(settings) as service:
        for seq, key_id in ((2, first_key.key_id), (11, new_key.key_id)):
            bundle = service.proof(dev, seq).bundle
            assert bundle["format"] == "vitalchain-proof/2"
            assert bundle["device_signature"]["key_id"] == key_id
            status, steps = _steps(bundle)
            assert status == "pending", steps  # not anchored here; every hash and both device steps hold
            assert steps["device-signature"] == "ok" and steps["device-key"] == "ok"
        # The service refuses to hand out a proof for the injected reading...
        with pytest.raises(ProofAltered, match="device signature"):
            service.proof(dev, 20)
        # ...and the bundle the operator would hand out instead fails device-signature alone.
        loc = service.ledger.locate(dev, 20)
        assert loc is not None
        window = service.ledger.window_by_index(loc.log_index)
        stored, _leaf = service._stored_reading(loc)
        size = service.mirror.sync()
        bundle = build_bundle(stored.canonical, loc.index_in_window, window.leaf_hashes,
                              window.header, loc.log_index, service.log, size)
        assert stored.sig_at is not None
        signed = service._signed_message(dev, stored.sig_at)
        bundle.update(format="vitalchain-proof/2", device_key=service._key_proof(
            dev, signed["key_id"], size), device_signature={"alg": "Ed25519", **signed})
        status, steps = _steps(bundle)
        assert status == "invalid" and steps["device-signature"] == "failed", steps
        assert steps["checkpoint"] == "ok" and steps["device-key"] == "ok"

        # D45: the first message's three readings were all kept, so its point holds no JSON and
        # the proof rebuilt them from their points; the injected one kept its JSON.
        messages = asyncio.run(_query(settings, "SELECT * FROM signed_messages"))
        by_count = {m.get("count"): m for m in messages}
        assert by_count[3].get("readings") is None and by_count[3]["key_id"] == first_key.key_id
        injected = [m for m in messages if m["time"] == point_time_ns(forged["ts_us"], 20)]
        assert len(injected) == 1 and injected[0]["readings"] and injected[0].get("count") is None
        # A neighbour altered after sealing is named, not left to fail the bundle's signature.
        loc3 = service.ledger.locate(dev, 3)
        assert loc3 is not None
        third, _ = service._stored_reading(loc3)
        forged3 = copy.deepcopy(third.canonical)
        forged3["vitals"]["hr"] = 151
        asyncio.run(_write(settings, [reading_point(
            forged3, None, third.window_id, third.late, third.received_us, third.sig_at)]))
        with pytest.raises(ProofAltered, match=f"{dev}/3 of the signed message"):
            service.proof(dev, 2)
        # A neighbour deleted: the rebuild refuses rather than show a shorter message.
        loc1 = service.ledger.locate(dev, 1)
        assert loc1 is not None
        asyncio.run(_query(settings, f"DELETE FROM readings WHERE \"device_id\" = '{dev}' AND "
                                     f"time = {point_time_ns(loc1.ts_us, 1)}"))
        with pytest.raises(ProofAltered, match="had 3 readings; InfluxDB holds 2"):
            service.proof(dev, 2)


async def _query(settings: Settings, q: str) -> list[dict[str, Any]]:
    async with InfluxClient(settings) as client:
        return await client.query(q)


async def _write(settings: Settings, points: list[Any]) -> None:
    async with InfluxClient(settings) as client:
        await client.write(points)


def test_provisioning_logs_keys_in_the_window_log(isolated: Settings) -> None:
    """Every key event is an entry of a device-key window in the ledger, in order."""
    prefix = f"log{uuid.uuid4().hex[:6]}"
    [ident] = provision_devices(isolated, 1, prefix=prefix)
    rotate_key(isolated, ident.device_id)
    revoke_key(isolated, ident.device_id)
    with Ledger(isolated.ledger_path) as ledger:
        windows = list(ledger.windows(topic="device-keys"))
    mine = [w for w in windows if w.header["format"] == "vitalchain-device-key-window/1"]
    assert [w.header["size"] for w in mine][-3:] == [1, 2, 1]  # register; register+revoke; revoke
    assert [w.log_index for w in mine] == sorted(w.log_index for w in mine)
    # A forged key (never registered) signs nothing the verifier accepts: key ids name keys.
    stranger = generate_private_key()
    assert key_id_of(public_key_bytes(stranger)) != ident.signing.key_id  # type: ignore[union-attr]
