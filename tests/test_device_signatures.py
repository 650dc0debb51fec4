"""Device signatures without services: signed bytes, the bridge's check, bundle /2, the verifier.

The bundle tests play the bridge/stream operator who controls the whole pipeline and ledger: they
rebuild every hash of a bundle around a reading the device never sent, so every hash step holds
and only ``device-signature`` can catch it (issue #13).
"""

from __future__ import annotations

import copy
import json

import pytest

from vitalchain.core.integrity import MerkleLog, canonical_reading, reading_leaf_hash, window_leaf_hash
from vitalchain.core.integrity.bundle import build_bundle
from vitalchain.core.integrity.devicekeys import (
    SignatureError,
    b64url,
    build_key_entry,
    build_key_proof,
    build_key_window_header,
    check_signature,
    from_b64url,
    generate_private_key,
    key_entry_leaf,
    key_id_of,
    load_public_key,
    public_key_bytes,
    sign_message,
)
from vitalchain.core.integrity.example import (
    EXAMPLE_ANCHOR,
    EXAMPLE_KEY,
    T0,
    example_bundle,
    example_device_key,
    example_signed_bundle,
    example_signed_parts,
)
from vitalchain.core.integrity.salt import salt_key_id
from vitalchain.core.integrity.window import build_window_header
from vitalchain.core.payload.validation import validate
from vitalchain.core.verify import verify_document

NOW = T0 + 10_000_000


def _reading(device: str, seq: int, hr: int = 80) -> dict:
    return {"device_id": device, "patient_id": "patient-4", "seq": seq,
            "ts_us": T0 + seq * 1_000_000,
            "vitals": {"hr": hr, "spo2": 97, "rr": 15, "temp_c": 36.8, "sys": 121, "dia": 79}}


def _steps(report) -> dict[str, str]:
    return {s.step: s.to_dict()["status"] for s in report.steps}


# --- signing and the bridge's check ------------------------------------------------------------
def test_signature_covers_every_reading_and_the_key_id() -> None:
    key, public = example_device_key()
    kid = key_id_of(public)
    readings = [_reading("watch-s", s) for s in (1, 2)]
    sig = sign_message(key, kid, readings)
    check_signature(load_public_key(public), kid, sig, readings)
    altered = copy.deepcopy(readings)
    altered[1]["vitals"]["hr"] = 81
    for bad_readings, bad_kid in ((altered, kid), (readings[:1], kid), (readings, "0" * 32)):
        with pytest.raises(SignatureError, match="does not verify"):
            check_signature(load_public_key(public), bad_kid, sig, bad_readings)


@pytest.mark.parametrize("encoding", [
    "", "A" * 85, "A" * 87, "A" * 84 + "==", "+" * 86, "/" * 86, "A" * 85 + "B", 12, None,
])
def test_malformed_signature_encodings_are_refused(encoding: object) -> None:
    """Only the canonical 86-character base64url of 64 bytes is a signature (no padding, no
    standard-alphabet characters, no non-canonical trailing bits)."""
    _key, public = example_device_key()
    with pytest.raises(SignatureError):
        check_signature(load_public_key(public), key_id_of(public), encoding, [_reading("w", 1)])


class _Keys:
    """What the bridge's keyring answers: one device with one key (and optionally a revoked one)."""

    def __init__(self) -> None:
        self.key = generate_private_key()
        self.public = public_key_bytes(self.key)
        self.kid = key_id_of(self.public)
        self.revoked: set[str] = set()

    def check(self, device_id: str, key_id: str, sig: object, readings: list) -> str | None:
        if device_id != "dev-1" or key_id != self.kid:
            return f"key {key_id!r} is not registered for device {device_id!r}"
        if key_id in self.revoked:
            return "revoked"
        try:
            check_signature(load_public_key(self.public), key_id, sig, readings)
        except SignatureError as exc:
            return str(exc)
        return None

    def payload(self, readings: list, kid: str | None = None, sig: str | None = None) -> bytes:
        kid = kid or self.kid
        return json.dumps({"key_id": kid, "sig": sig or sign_message(self.key, kid, readings),
                           "readings": readings}).encode()


def _validate(keys: _Keys, payload: bytes, required: bool = True):
    return validate("vitals/dev-1", payload, NOW, max_payload_bytes=65536, max_future_seconds=300,
                    signatures=keys.check, require_signature=required)


def test_signed_message_passes_and_carries_what_a_proof_needs() -> None:
    keys = _Keys()
    readings = [_reading("dev-1", s) for s in (1, 2, 3)]
    outcome = _validate(keys, keys.payload(readings))
    assert not outcome.rejections and outcome.readings == readings
    assert outcome.signed is not None and outcome.signed.readings == readings


def test_unsigned_message_refused_when_required_accepted_when_optional() -> None:
    keys = _Keys()
    for payload in (json.dumps(_reading("dev-1", 1)).encode(),
                    json.dumps({"readings": [_reading("dev-1", 1)]}).encode()):
        refused = _validate(keys, payload, required=True)
        assert [r.reason for r in refused.rejections] == ["bad_signature"]
        assert "not signed" in refused.rejections[0].detail and not refused.readings
        allowed = _validate(keys, payload, required=False)
        assert not allowed.rejections and allowed.signed is None


@pytest.mark.parametrize("case", ["wrong_key_id", "other_devices_key", "bad_encoding",
                                  "replay_other_seq", "altered_reading", "revoked",
                                  "key_id_not_string", "signed_single_reading"])
def test_hostile_signed_messages_are_bad_signature(case: str) -> None:
    keys = _Keys()
    readings = [_reading("dev-1", s) for s in (1, 2)]
    good_sig = sign_message(keys.key, keys.kid, readings)
    if case == "wrong_key_id":
        payload = keys.payload(readings, kid="f" * 32, sig=good_sig)
    elif case == "other_devices_key":
        other = generate_private_key()
        kid = key_id_of(public_key_bytes(other))
        payload = keys.payload(readings, kid=kid, sig=sign_message(other, kid, readings))
    elif case == "bad_encoding":
        payload = keys.payload(readings, sig=good_sig + "==")
    elif case == "replay_other_seq":  # the same signed message re-sent under other seqs
        replay = copy.deepcopy(readings)
        for r in replay:
            r["seq"] += 100
        payload = keys.payload(replay, sig=good_sig)
    elif case == "altered_reading":
        altered = copy.deepcopy(readings)
        altered[0]["vitals"]["spo2"] = 99
        payload = keys.payload(altered, sig=good_sig)
    elif case == "revoked":
        keys.revoked.add(keys.kid)
        payload = keys.payload(readings)
    elif case == "key_id_not_string":
        payload = json.dumps({"key_id": 7, "sig": good_sig, "readings": readings}).encode()
    else:
        payload = json.dumps({**readings[0], "key_id": keys.kid, "sig": good_sig}).encode()
    outcome = _validate(keys, payload, required=False)  # a bad signature is refused in both modes
    assert [r.reason for r in outcome.rejections] == ["bad_signature"], outcome.rejections
    assert not outcome.readings and outcome.signed is None


def test_a_bad_reading_in_a_signed_message_is_per_reading() -> None:
    """The signature covers the message as sent; a signed but implausible reading is still
    dead-lettered on its own (out_of_range) and its good neighbours go on."""
    keys = _Keys()
    readings = [_reading("dev-1", 1), _reading("dev-1", 2, hr=999)]
    outcome = _validate(keys, keys.payload(readings))
    assert [r.reason for r in outcome.rejections] == ["out_of_range"]
    assert outcome.readings == readings[:1] and outcome.signed is not None


# --- bundle /2 and the verifier -----------------------------------------------------------------
def test_example_bundle_v2_verifies_with_both_device_steps() -> None:
    report = verify_document(example_signed_bundle())
    steps = _steps(report)
    assert report.status == "valid"
    assert steps["device-signature"] == "ok" and steps["device-key"] == "ok"
    assert report.summary == "signed by the device, hashes valid, anchor not checked"


def test_proof_v1_still_verifies() -> None:
    report = verify_document(example_bundle())
    assert report.status == "valid" and "device-signature" not in _steps(report)
    assert report.summary == "hashes valid, anchor not checked"  # says nothing of a device


def _forged_bundle(reading_sent: dict, signed_readings: list, sig: str) -> dict:
    """What an operator who runs the pipeline can hand out: a reading of its choosing sealed in a
    window of its own, every hash rebuilt, with the device's genuine key proof and message."""
    p = example_signed_parts()
    forged = canonical_reading(reading_sent, EXAMPLE_KEY)
    readings = [forged]
    header = build_window_header(readings, partition=2, first_offset=0, last_offset=0,
                                 salt_key_id=salt_key_id(EXAMPLE_KEY))
    log = MerkleLog([window_leaf_hash(p["key_header"]), window_leaf_hash(header)])
    key_proof = build_key_proof(p["entry"], 0, [key_entry_leaf(p["entry"])], p["key_header"], 0,
                                2, log.inclusion_proof(0, 2))
    bundle = build_bundle(forged, 0, [reading_leaf_hash(forged)], header, 1, log, 2, EXAMPLE_ANCHOR)
    bundle.update(format="vitalchain-proof/2", device_key=key_proof,
                  device_signature={"alg": "Ed25519", "key_id": p["key_id"], "sig": sig,
                                    "readings": signed_readings})
    return bundle


@pytest.mark.parametrize("attack", ["altered_after_signing", "injected_never_sent",
                                    "altered_in_signed_copy_too"])
def test_operator_forgery_fails_device_signature_only(attack: str) -> None:
    p = example_signed_parts()
    sent, sig = p["sent"], p["sig"]
    if attack == "altered_after_signing":  # hr 82 -> 120 after the device signed
        reading = copy.deepcopy(sent[1])
        reading["vitals"]["hr"] = 120
        bundle = _forged_bundle(reading, sent, sig)
    elif attack == "injected_never_sent":  # a seq the device never sent
        bundle = _forged_bundle(_reading("watch-s", 9), sent, sig)
    else:  # the operator edits the signed copy as well: the signature breaks
        reading = copy.deepcopy(sent[1])
        reading["vitals"]["hr"] = 120
        edited = copy.deepcopy(sent)
        edited[1] = reading
        bundle = _forged_bundle(reading, edited, sig)
    report = verify_document(bundle)
    steps = _steps(report)
    assert report.status == "invalid" and report.failed_step == "device-signature"
    assert report.summary.startswith("hashes valid, device signature INVALID: step "
                                     "device-signature failed")
    hash_steps = ("reading-leaf", "reading-inclusion", "window-leaf", "window-inclusion",
                  "checkpoint")
    assert all(steps[s] == "ok" for s in hash_steps), steps
    assert steps["device-key"] == "ok"


def test_key_registered_after_the_reading_fails_device_key() -> None:
    """A key put into the log after the reading's window (an operator planting its own key to
    sign a forgery) does not prove the device signed it."""
    p = example_signed_parts()
    log = MerkleLog([window_leaf_hash(p["header"]), window_leaf_hash(p["key_header"])])
    leaves = [reading_leaf_hash(r) for r in p["readings"]]
    bundle = build_bundle(p["readings"][1], 1, leaves, p["header"], 0, log, 2, EXAMPLE_ANCHOR)
    bundle.update(format="vitalchain-proof/2",
                  device_key=build_key_proof(p["entry"], 0, [key_entry_leaf(p["entry"])],
                                             p["key_header"], 1, 2, log.inclusion_proof(1, 2)),
                  device_signature={"alg": "Ed25519", "key_id": p["key_id"], "sig": p["sig"],
                                    "readings": p["sent"]})
    report = verify_document(bundle)
    assert report.failed_step == "device-key" and "not before" in report.steps[-2].detail


def test_rotation_keeps_old_readings_verifiable() -> None:
    """After the device's key is rotated (new key registered, old one revoked, both in the log),
    a reading signed with the old key still proves with the old key's registration."""
    p = example_signed_parts()
    new_key = generate_private_key()
    _old, old_public = example_device_key()
    rotation = [build_key_entry(2, T0 + 60_000_000, "register", "watch-s", public_key_bytes(new_key)),
                build_key_entry(3, T0 + 60_000_000, "revoke", "watch-s", old_public)]
    rotation_header = build_key_window_header(rotation)
    log = MerkleLog([window_leaf_hash(p["key_header"]), window_leaf_hash(p["header"]),
                     window_leaf_hash(rotation_header)])
    leaves = [reading_leaf_hash(r) for r in p["readings"]]
    key_proof = build_key_proof(p["entry"], 0, [key_entry_leaf(p["entry"])], p["key_header"], 0, 3,
                                log.inclusion_proof(0, 3))
    bundle = build_bundle(p["readings"][2], 2, leaves, p["header"], 1, log, 3, EXAMPLE_ANCHOR,
                          {"key_id": p["key_id"], "sig": p["sig"], "readings": p["sent"]}, key_proof)
    report = verify_document(bundle)
    assert report.status == "valid", report.to_dict()


@pytest.mark.parametrize("member,value", [
    ("device_signature", None), ("device_key", []),
])
def test_unreadable_device_members_are_input_errors(member: str, value: object) -> None:
    bundle = example_signed_bundle()
    bundle[member] = value
    report = verify_document(bundle)
    assert report.status == "error" and member in (report.error or "")


def test_b64url_round_trip_is_canonical() -> None:
    raw = bytes(range(64))
    assert from_b64url(b64url(raw), 64, "x") == raw
    assert len(b64url(raw)) == 86 and "=" not in b64url(raw)


def test_keyring_follows_the_key_file_and_survives_a_corrupt_one(tmp_path) -> None:
    """The bridge's keyring sees a revocation at the next lookup, and a corrupt key file makes
    lookups fail as bad signatures (dead-lettered) instead of crashing the bridge."""
    from vitalchain.config import load_settings
    from vitalchain.devices import keys as device_keys
    from vitalchain.storage.ledger import Ledger

    settings = load_settings(environ={}, state_dir=tmp_path)
    Ledger(settings.ledger_path).close()
    (tmp_path / "devices").mkdir()
    device_keys.ensure_keys(settings, ["dev-1"])
    keyring = device_keys.Keyring(settings)
    kid = device_keys.active_key(settings, "dev-1").key_id  # type: ignore[union-attr]
    keyring.lookup("dev-1", kid)
    with pytest.raises(SignatureError, match="not registered"):
        keyring.lookup("dev-2", kid)
    device_keys.revoke(settings, "dev-1")
    with pytest.raises(SignatureError, match="revoked"):
        keyring.lookup("dev-1", kid)
    assert device_keys.signing_key(settings, "dev-1") is None  # the private key is gone
    device_keys.keys_path(settings).write_text("{not json")
    with pytest.raises(SignatureError, match="cannot read the device-key file"):
        keyring.lookup("dev-1", kid)


def test_key_commands_list_rotate_and_revoke(tmp_path) -> None:
    """`vitalchain devices keys / rotate-key / revoke-key` on a state folder (no broker needed:
    the devices are recorded for a Mosquitto started later)."""
    from click.testing import CliRunner

    from vitalchain.app.cli import main
    from vitalchain.config import load_settings
    from vitalchain.devices.registry import provision_devices

    settings = load_settings(environ={}, state_dir=tmp_path)
    [ident] = provision_devices(settings, 1, prefix="keycli", apply=False)
    assert ident.signing is not None
    env = {"VITALCHAIN_STATE_DIR": str(tmp_path)}
    runner = CliRunner()
    listed = runner.invoke(main, ["devices", "keys"], env=env)
    assert listed.exit_code == 0 and f"keycli-00001  {ident.signing.key_id}" in listed.output
    assert "active" in listed.output
    rotated = runner.invoke(main, ["devices", "rotate-key", "keycli-00001"], env=env)
    assert rotated.exit_code == 0 and "new key" in rotated.output, rotated.output
    revoked = runner.invoke(main, ["devices", "revoke-key", "keycli-00001"], env=env)
    assert revoked.exit_code == 0 and "revoked" in revoked.output, revoked.output
    again = runner.invoke(main, ["devices", "revoke-key", "keycli-00001"], env=env)
    assert again.exit_code != 0 and "no active key" in again.output
    unknown = runner.invoke(main, ["devices", "rotate-key", "nobody"], env=env)
    assert unknown.exit_code != 0 and "not provisioned" in unknown.output
    listed = runner.invoke(main, ["devices", "keys", "keycli-00001"], env=env)
    assert listed.output.count("revoked") == 2, listed.output  # rotated-out and revoked
