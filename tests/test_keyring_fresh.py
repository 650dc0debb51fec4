"""The bridge's keyring checks ``keys.json`` at most once per batch of queued messages, and still
sees a revocation for every message that arrived after it (devices/keys.py ``Keyring``)."""

from __future__ import annotations

import time

import pytest

from vitalchain.core.integrity.devicekeys import SignatureError


def _keyring(tmp_path):
    from vitalchain.config import load_settings
    from vitalchain.devices import keys as device_keys
    from vitalchain.storage.ledger import Ledger

    settings = load_settings(environ={}, state_dir=tmp_path)
    Ledger(settings.ledger_path).close()
    (tmp_path / "devices").mkdir()
    device_keys.ensure_keys(settings, ["dev-1"])
    kid = device_keys.active_key(settings, "dev-1").key_id  # type: ignore[union-attr]
    return settings, device_keys.Keyring(settings), kid


def test_messages_queued_before_a_check_share_it(tmp_path) -> None:
    _settings, keyring, kid = _keyring(tmp_path)
    arrived = time.monotonic_ns()
    keyring.lookup("dev-1", kid, arrived)
    stats = keyring.stats
    for _ in range(100):  # arrived before the stat just made: no filesystem access
        keyring.lookup("dev-1", kid, arrived)
    assert keyring.stats == stats
    keyring.lookup("dev-1", kid, time.monotonic_ns())  # arrived after it: a stat
    assert keyring.stats == stats + 1
    keyring.lookup("dev-1", kid)  # no arrival time: a stat every time, as before
    assert keyring.stats == stats + 2


def test_a_message_arriving_after_a_revocation_sees_it(tmp_path) -> None:
    from vitalchain.devices import keys as device_keys

    settings, keyring, kid = _keyring(tmp_path)
    queued = time.monotonic_ns()
    keyring.lookup("dev-1", kid, queued)
    device_keys.revoke(settings, "dev-1")
    # A message that arrived before the last check (queued behind it): the answer of that
    # check, what the bridge would have said had it been quicker.
    keyring.lookup("dev-1", kid, queued)
    with pytest.raises(SignatureError, match="revoked"):
        keyring.lookup("dev-1", kid, time.monotonic_ns())


def test_an_unreadable_file_is_checked_again_at_every_lookup(tmp_path) -> None:
    from vitalchain.devices import keys as device_keys

    settings, keyring, kid = _keyring(tmp_path)
    keyring.lookup("dev-1", kid, time.monotonic_ns())
    text = device_keys.keys_path(settings).read_text()
    device_keys.keys_path(settings).write_text("{not json")
    with pytest.raises(SignatureError, match="cannot read the device-key file"):
        keyring.lookup("dev-1", kid, time.monotonic_ns())
    arrived = time.monotonic_ns() - 10**9  # even a message from before: refused, not cached
    with pytest.raises(SignatureError, match="cannot read the device-key file"):
        keyring.lookup("dev-1", kid, arrived)
    device_keys.keys_path(settings).write_text(text)
    keyring.lookup("dev-1", kid, arrived)  # readable again: the key answers at once
