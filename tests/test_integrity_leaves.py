"""Canonical JSON, salts and salt keys, window headers, and the bundle builder."""

from __future__ import annotations

import os
import stat

import pytest

from vitalchain.config import load_settings
from vitalchain.core.integrity import (
    CanonicalError,
    MerkleLog,
    blake3_hasher,
    build_bundle,
    build_window_header,
    canonical_json,
    canonical_reading,
    derive_salt,
    reading_leaf_hash,
    root,
    salt_key_id,
    window_leaf_hash,
)
from vitalchain.storage.saltkey import SaltKeyError, load_or_create_salt_key

KEY = bytes(range(32))
VITALS = {"hr": 72, "spo2": 98, "rr": 14, "temp_c": 36.6, "sys": 118, "dia": 76}


def reading(device="dev-1", seq=0, ts=1_700_000_000_000_000, **extra):
    return {"device_id": device, "patient_id": "pat-1", "seq": seq, "ts_us": ts,
            "vitals": dict(VITALS), **extra}


# --- canonical JSON --------------------------------------------------------------------------


def test_canonical_json_is_rfc8785():
    assert canonical_json({"b": 1, "a": [1.0, "é", None, True]}) == b'{"a":[1,"\xc3\xa9",null,true],"b":1}'
    assert canonical_json({"x": 1e21, "y": -0.0, "z": 0.1}) == b'{"x":1e+21,"y":0,"z":0.1}'
    assert canonical_json(2**53 - 1) == b"9007199254740991"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"ts_us": 1_700_000_000_000_000_000}, "$.ts_us: integer"),
        ({"v": [1, -(2**53)]}, "$.v[1]"),
        ({"t": float("nan")}, "$.t"),
        ({"t": float("inf")}, "$.t"),
        ({1: "x"}, "key 1 is not a string"),
        ({"s": "\ud800"}, "not valid Unicode"),
        ({"b": b"bytes"}, "bytes is not a JSON type"),
    ],
)
def test_canonical_json_rejects_with_path(value, message):
    with pytest.raises(CanonicalError, match=message.replace("$", r"\$").replace("[", r"\[")):
        canonical_json(value)


# --- salts -----------------------------------------------------------------------------------


def test_salt_is_keyed_blake3_of_jcs_identity():
    import blake3

    salt = derive_salt(KEY, "dev-1", 7)
    assert salt == blake3.blake3(b'["vitalchain-salt/1","dev-1",7]', key=KEY).hexdigest()
    assert len(salt) == 64 and salt == derive_salt(KEY, "dev-1", 7)
    assert salt != derive_salt(KEY, "dev-1", 8) != derive_salt(KEY, "dev-2", 7)
    assert salt != derive_salt(bytes(32), "dev-1", 7)
    assert derive_salt(KEY, "a1", 2) != derive_salt(KEY, "a", 12)
    assert salt_key_id(KEY) == blake3.blake3(KEY).hexdigest()[:8]
    with pytest.raises(ValueError):
        derive_salt(b"short", "dev-1", 1)
    with pytest.raises(ValueError):
        derive_salt(KEY, "dev-1", -1)


def test_canonical_reading_keeps_device_fields_plus_salt():
    obj = canonical_reading(reading(seq=3, received_us=5, late=True), KEY)
    assert set(obj) == {"device_id", "patient_id", "seq", "ts_us", "vitals", "salt"}
    assert obj["salt"] == derive_salt(KEY, "dev-1", 3)
    assert reading_leaf_hash(obj) == blake3_hasher.leaf(canonical_json(obj))
    with pytest.raises(KeyError, match="vitals"):
        canonical_reading({"device_id": "d", "patient_id": "p", "seq": 1, "ts_us": 1}, KEY)


def test_salt_key_created_in_dev_only(tmp_path):
    dev = load_settings(environ={}, state_dir=tmp_path, mode="dev")
    key = load_or_create_salt_key(dev)
    path = tmp_path / "secrets" / "salt.key"
    assert len(key) == 32 and path.read_text().strip() == key.hex()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_salt_key(dev) == key  # stable across calls

    prod_dir = tmp_path / "prod"
    prod = load_settings(environ={}, state_dir=prod_dir, mode="production")
    with pytest.raises(SaltKeyError, match="never created"):
        load_or_create_salt_key(prod)
    assert not (prod_dir / "secrets" / "salt.key").exists()

    own = tmp_path / "own.key"
    own.write_text(KEY.hex() + "\n")
    pinned = load_settings(environ={"VITALCHAIN_SALT_KEY_FILE": str(own)}, state_dir=prod_dir,
                           mode="production")
    assert load_or_create_salt_key(pinned) == KEY
    own.write_text("not hex")
    with pytest.raises(SaltKeyError, match="64 hex"):
        load_or_create_salt_key(pinned)


# --- window headers and bundles --------------------------------------------------------------


def window_readings():
    raw = [reading("dev-1", 10, 1_000), reading("dev-2", 4, 1_500), reading("dev-1", 12, 900),
           reading("dev-1", 11, 2_000), reading("dev-2", 5, 1_700)]
    return [canonical_reading(r, KEY) for r in raw]


def test_window_header_fields():
    rs = window_readings()
    h = build_window_header(rs, partition=2, first_offset=40, last_offset=44,
                            salt_key_id=salt_key_id(KEY), late=1)
    assert h == {
        "format": "vitalchain-window/1",
        "window_id": "p2-40",
        "partition": 2,
        "first_offset": 40,
        "last_offset": 44,
        "start_us": 900,
        "end_us": 2_000,
        "size": 5,
        "root": root([reading_leaf_hash(r) for r in rs]).hex(),
        "devices": {"dev-1": {"first_seq": 10, "last_seq": 12, "count": 3},
                    "dev-2": {"first_seq": 4, "last_seq": 5, "count": 2}},
        "late": 1,
        "salt_key_id": salt_key_id(KEY),
    }
    canonical_json(h)
    with pytest.raises(ValueError):
        build_window_header([], partition=0, first_offset=0, last_offset=0, salt_key_id="x")
    with pytest.raises(ValueError):
        build_window_header(rs, partition=0, first_offset=5, last_offset=4, salt_key_id="x")


def test_build_bundle_checks_its_inputs():
    rs = window_readings()
    leaves = [reading_leaf_hash(r) for r in rs]
    h = build_window_header(rs, partition=0, first_offset=0, last_offset=4, salt_key_id="k")
    log = MerkleLog([blake3_hasher.leaf(b"older window"), window_leaf_hash(h)])
    b = build_bundle(rs[2], 2, leaves, h, 1, log, 2, None)
    assert b["reading_proof"]["size"] == 5 and b["window_proof"] == {
        "index": 1, "size": 2, "path": [log.leaf(0).hex()]}
    assert b["checkpoint"] == log.checkpoint(2)
    assert build_bundle(rs[2], 2, leaves, h, 1, log.leaves, 2, None) == b
    with pytest.raises(ValueError, match="does not hash"):
        build_bundle(rs[1], 2, leaves, h, 1, log, 2, None)
    with pytest.raises(ValueError, match="root/size"):
        build_bundle(rs[2], 2, leaves[:4], h, 1, log, 2, None)
    with pytest.raises(ValueError, match="window_index"):
        build_bundle(rs[2], 2, leaves, h, 1, log, 1, None)
    with pytest.raises(ValueError, match="log leaf"):
        build_bundle(rs[2], 2, leaves, h, 0, log, 2, None)
    with pytest.raises(ValueError, match="anchor lacks"):
        build_bundle(rs[2], 2, leaves, h, 1, log, 2, {"chain_id": 1})
