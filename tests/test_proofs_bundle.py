"""Proof service on real InfluxDB + anvil: bundles verify on chain, and any altered byte fails."""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.common_support import wait_until
from vitalchain.anchor.deploy import deploy
from vitalchain.anchor.proofs import (
    ProofService,
    ProofUnavailable,
    build_consistency,
    build_proof,
)
from vitalchain.anchor.synthetic import SyntheticSealer, write_readings
from vitalchain.anchor.worker import run_worker
from vitalchain.app.commands.anchor import proof_group
from vitalchain.config import Settings
from vitalchain.core.integrity import reading_leaf_hash
from vitalchain.core.verify import verify_bundle, verify_consistency_document
from vitalchain.storage.anchors import AnchorStore
from vitalchain.storage.chainrpc import JsonRpc
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.readings import reading_point


def _anchored(settings: Settings) -> int:
    with AnchorStore(settings.ledger_path) as store:
        cp = store.latest(settings.anchor_contract, "anchored")
    return cp.size if cp else 0


@pytest.fixture
def proving(isolated: Settings, tmp_path: Path) -> Settings:
    settings = isolated.with_overrides(anchor_every_windows=2, anchor_interval_seconds=0.5,
                                       anchor_confirmations=2)
    address = deploy(settings, record=False).address
    return settings.with_overrides(anchor_contract=address)


def _seal(settings: Settings, sealer: SyntheticSealer, windows: int,
          size: int = 4) -> list[dict[str, Any]]:
    sealed = [sealer.seal(size) for _ in range(windows)]
    write_readings(settings, [(readings, header) for _, readings, header in sealed])
    return [r for _, readings, _ in sealed for r in readings]


def _anchor_until(settings: Settings, size: int) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=run_worker, args=(settings, stop),
                              kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: _anchored(settings) == size, 30, f"checkpoint {size} anchored")
    finally:
        stop.set()
        thread.join(30)


def _rewrite_reading(settings: Settings, reading: dict[str, Any], window_id: str) -> None:
    async def write() -> None:
        async with InfluxClient(settings) as client:
            await client.write([reading_point(reading, reading_leaf_hash(reading), window_id,
                                              False, reading["ts_us"])])
    asyncio.run(write())


def _status(bundle: dict[str, Any], rpc_url: str | None) -> tuple[str, str | None]:
    report = verify_bundle(bundle, JsonRpc(rpc_url) if rpc_url else None)
    return report.status, report.failed_step


@pytest.mark.e2e
def test_bundles_verify_on_chain_and_tampering_fails(proving: Settings, tmp_path: Path) -> None:
    settings, rpc = proving, proving.eth_rpc_url
    ledger = Ledger(settings.ledger_path)
    sealer = SyntheticSealer(ledger, devices=3)
    readings = _seal(settings, sealer, 3)

    # Before anything is anchored: pending offline, refused on chain.
    first = build_proof(settings, readings[0]["device_id"], readings[0]["seq"])
    assert first["anchor"] is None and first["checkpoint"]["size"] == 3
    assert _status(first, None) == ("pending", None)
    assert _status(first, rpc)[0] == "invalid"

    _anchor_until(settings, 3)
    readings += _seal(settings, sealer, 2)
    _anchor_until(settings, 5)

    with ProofService(settings) as service:
        for r in readings:
            result = service.proof(r["device_id"], r["seq"])
            assert result.status == "anchored"
            assert result.bundle["reading"] == r
            assert result.bundle["checkpoint"]["size"] == 5
            assert _status(result.bundle, rpc) == ("valid", None), r
        by_time = service.proof(readings[5]["device_id"], ts_us=readings[5]["ts_us"]).bundle
    assert by_time == build_proof(settings, readings[5]["device_id"], readings[5]["seq"])

    # Each anchor is also a point in InfluxDB's `anchors` measurement (written once confirmed).
    async def anchor_rows() -> list[dict[str, Any]]:
        async with InfluxClient(settings) as client:
            return await client.query('SELECT * FROM "anchors" ORDER BY time')

    rows = wait_until(lambda: len(asyncio.run(anchor_rows())) == 2 and asyncio.run(anchor_rows()),
                      15, "anchors points in InfluxDB")
    with AnchorStore(settings.ledger_path) as store:
        anchored = store.checkpoints(settings.anchor_contract, "anchored")
    assert [(r["size"], r["tx_hash"], r["block_number"], r["contract"]) for r in rows] == \
        [(cp.size, cp.tx_hash, cp.block_number, cp.contract) for cp in anchored]

    bundle = build_proof(settings, readings[6]["device_id"], readings[6]["seq"])
    tampered: list[tuple[str, Any]] = []
    for path, change in (
        (("reading", "vitals", "hr"), lambda v: v + 1),
        (("reading", "salt"), lambda v: ("0" if v[0] != "0" else "1") + v[1:]),
        (("reading_proof", "path", 0), lambda v: ("0" if v[0] != "0" else "1") + v[1:]),
        (("window", "start_us"), lambda v: v - 1),
        (("window_proof", "index"), lambda v: v + 1),
        (("checkpoint", "root"), lambda v: ("0" if v[0] != "0" else "1") + v[1:]),
        (("anchor", "block_number"), lambda v: v - 1),
        (("anchor", "tx_hash"), lambda v: v[:-1] + ("0" if v[-1] != "0" else "1")),
    ):
        copy_ = copy.deepcopy(bundle)
        target = copy_
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = change(target[path[-1]])
        status, step = _status(copy_, rpc)
        tampered.append((".".join(map(str, path)), (status, step)))
        assert status == "invalid", (path, step)
    assert dict(tampered)["reading.vitals.hr"][1] == "reading-inclusion"
    assert dict(tampered)["anchor.tx_hash"][1] == "anchor-receipt"

    # A reading altered in InfluxDB is refused; its window neighbour still proves.
    victim, neighbour = readings[8], readings[9]
    window_id = ledger.locate(victim["device_id"], victim["seq"]).window_id
    assert ledger.locate(neighbour["device_id"], neighbour["seq"]).window_id == window_id
    altered = copy.deepcopy(victim)
    altered["vitals"]["hr"] += 7
    _rewrite_reading(settings, altered, window_id)
    with pytest.raises(ProofUnavailable, match="altered after sealing"):
        build_proof(settings, victim["device_id"], victim["seq"])
    assert _status(build_proof(settings, neighbour["device_id"], neighbour["seq"]), rpc) == \
        ("valid", None)

    # CLI: `vitalchain proof DEVICE SEQ -o FILE`, and the default-to-`reading` dispatch.
    out = tmp_path / "proof.json"
    result = CliRunner().invoke(proof_group, [neighbour["device_id"], str(neighbour["seq"]),
                                              "-o", str(out)], obj=settings)
    assert result.exit_code == 0, result.output
    assert _status(json.loads(out.read_text()), rpc) == ("valid", None)
    result = CliRunner().invoke(proof_group, ["--at", str(neighbour["ts_us"]),
                                              neighbour["device_id"]], obj=settings)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(out.read_text())
    result = CliRunner().invoke(proof_group, [victim["device_id"], str(victim["seq"])],
                                obj=settings)
    assert result.exit_code == 1 and "altered after sealing" in result.output
    result = CliRunner().invoke(proof_group, ["nobody", "1"], obj=settings)
    assert result.exit_code == 1 and "no sealed reading" in result.output

    # A stored window altered in the ledger (bypassing its append-only triggers) is refused.
    db = sqlite3.connect(settings.ledger_path)
    db.execute("DROP TRIGGER ledger_windows_no_update")
    header = json.loads(db.execute("SELECT header FROM ledger_windows WHERE log_index=1")
                        .fetchone()[0])
    header["end_us"] += 1
    db.execute("UPDATE ledger_windows SET header=? WHERE log_index=1", (json.dumps(header),))
    db.commit()
    db.close()
    in_window_1 = next(r for r in readings
                       if ledger.locate(r["device_id"], r["seq"]).log_index == 1)
    with pytest.raises(ProofUnavailable, match="altered"):
        build_proof(settings, in_window_1["device_id"], in_window_1["seq"])
    ledger.close()


@pytest.mark.e2e
def test_consistency_between_anchored_checkpoints(proving: Settings, tmp_path: Path) -> None:
    settings, rpc = proving, proving.eth_rpc_url
    ledger = Ledger(settings.ledger_path)
    sealer = SyntheticSealer(ledger, seed=2)
    _seal(settings, sealer, 3, size=2)
    _anchor_until(settings, 3)
    _seal(settings, sealer, 4, size=2)
    _anchor_until(settings, 7)

    doc = build_consistency(settings, 3, 7)
    assert doc["format"] == "vitalchain-consistency/1" and doc["path"]
    report = verify_consistency_document(doc, JsonRpc(rpc))
    assert report.ok, report.steps
    assert [s.step for s in report.steps] == ["format", "consistency", "anchor-old", "anchor-new"]
    bad = copy.deepcopy(doc)
    bad["path"][0] = ("0" if bad["path"][0][0] != "0" else "1") + bad["path"][0][1:]
    assert verify_consistency_document(bad).failed_step == "consistency"
    swapped = copy.deepcopy(doc)
    swapped["anchors"]["new"] = doc["anchors"]["old"]
    assert verify_consistency_document(swapped, JsonRpc(rpc)).failed_step == "anchor-new"
    with pytest.raises(ProofUnavailable, match="not an anchored checkpoint"):
        build_consistency(settings, 2, 7)

    out = tmp_path / "consistency.json"
    result = CliRunner().invoke(proof_group, ["consistency", "3", "7", "-o", str(out)],
                                obj=settings)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(proof_group, ["verify-consistency", str(out), "--rpc", rpc])
    assert result.exit_code == 0 and "VALID" in result.output, result.output
    assert "VALID" in result.output and "verdict: hashes valid, both anchors verified on chain (blocks " \
        in result.output, result.output
    offline = CliRunner().invoke(proof_group, ["verify-consistency", str(out)])
    assert offline.exit_code == 0 and "anchors not checked" in offline.output, offline.output
    ledger.close()
