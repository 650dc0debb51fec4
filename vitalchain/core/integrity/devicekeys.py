"""Device signatures and the device-key log: formats, signed bytes, Ed25519 checks (pure, no I/O).

A wearable signs each MQTT message (a batch of readings) with its own Ed25519 key. What it signs
is ``JCS({"key_id": <key id>, "readings": [<readings as sent>]})`` (RFC 8785, the project's
canonical JSON), so the bytes are rebuilt from the JSON data alone by anyone, in any language, and
the signature covers every reading's ``device_id`` and ``seq`` (a replay under another seq fails).

Which key belonged to which device, and when, is itself in the anchored window log: every
registration or revocation of a device key is an *entry* (hashed ``BLAKE3(0x00 || JCS(entry))``,
like a reading), entries are sealed in *device-key windows* appended to the same log as reading
and access windows (pseudo-topic ``device-keys`` partition 0, offsets = entry seq). Formats:

- entry ``{"format": "vitalchain-device-key/1", "seq", "ts_us", "action": "register"|"revoke",
  "device_id", "key_id", "alg": "Ed25519", "public_key": <base64url of the 32 raw bytes>}``;
- window header ``{"format": "vitalchain-device-key-window/1", "window_id": "device-keys-<first
  seq>", "partition": 0, "first_offset", "last_offset", "start_us", "end_us", "size", "root"}``;
- ``key_id`` = the first 32 hex characters of SHA-256 of the raw public key (so a key id names
  one key, and an entry whose public key does not hash to its key id is refused).

The library is PyNaCl (libsodium's Ed25519, RFC 8032), never hand-written crypto: one backend for
signing (devices) and verifying (the bridge, the offline verifier), because libsodium verifies in
about half of OpenSSL's CPU time and the bridge checks every MQTT message (docs/DECISIONS.md D42).
Ed25519 is deterministic, so the signatures are byte for byte the ones ``cryptography`` (OpenSSL)
makes (tests/test_signature_backend.py). The acceptance rule is written down here, not left to a
library version: a public key must be the canonical encoding of a point of the prime-order
subgroup (no small-order, mixed-order or non-canonical key, refused when the key is loaded); a
signature's ``S`` must be below the group order L (checked here, and by both libraries); libsodium
then refuses a small-order ``R`` (OpenSSL would accept one) and checks the cofactorless equation,
as OpenSSL does. So a signature is accepted only if OpenSSL *and* libsodium would accept it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nacl import bindings as _sodium
from nacl.exceptions import BadSignatureError, CryptoError

from .access import entry_leaf, entry_window_header
from .canonical import CanonicalError, canonical_json, device_reading_json
from .merkle import inclusion_proof

ALG = "Ed25519"
ENTRY_FORMAT = "vitalchain-device-key/1"
WINDOW_FORMAT = "vitalchain-device-key-window/1"
KEY_TOPIC = "device-keys"
KEY_PARTITION = 0
ACTIONS = ("register", "revoke")
KEY_ID = re.compile(r"[0-9a-f]{32}")
# base64url without padding: 32 bytes -> 43 characters, 64 bytes -> 86.
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
PUBLIC_KEY_CHARS = 43
SIGNATURE_CHARS = 86
# The order of Ed25519's prime-order subgroup (RFC 8032 section 5.1): a signature's S must be below.
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493


@dataclass(frozen=True, slots=True, repr=False)
class PrivateKey:
    """A device's Ed25519 private key: the 32-byte seed (what devices/keys.py stores) and
    libsodium's 64-byte secret key (seed || public key) derived from it once, so signing does
    not derive it again per message."""

    seed: bytes
    secret: bytes
    public: bytes

    def __repr__(self) -> str:  # never the seed in a log or a traceback
        return f"PrivateKey(public={b64url(self.public)})"

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data`` (the method ``cryptography``'s key has, so
        a device's writer calls one bound method per message)."""
        return _sodium.crypto_sign(data, self.secret)[:64]


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A checked Ed25519 public key (see :func:`load_public_key`): its 32 raw bytes."""

    raw: bytes


class SignatureError(ValueError):
    """A signature, key or signed message is malformed or does not verify; the text says which."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def from_b64url(text: Any, length: int, what: str) -> bytes:
    """Strict base64url without padding of exactly ``length`` bytes (canonical encoding only)."""
    chars = {32: PUBLIC_KEY_CHARS, 64: SIGNATURE_CHARS}[length]
    if not isinstance(text, str) or len(text) != chars or not _B64URL.fullmatch(text):
        raise SignatureError(f"{what} must be {chars} base64url characters (no padding)")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{what} is not base64url: {exc}") from None
    if len(raw) != length or b64url(raw) != text:
        raise SignatureError(f"{what} is not the canonical base64url of {length} bytes")
    return raw


def key_id_of(public_key: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()[:32]


def private_key_from_seed(seed: bytes) -> PrivateKey:
    """The private key of a 32-byte seed (RFC 8032's private key)."""
    if type(seed) is not bytes or len(seed) != 32:
        raise SignatureError("an Ed25519 seed is 32 bytes")
    public, secret = _sodium.crypto_sign_seed_keypair(seed)
    return PrivateKey(seed, secret, public)


def generate_private_key() -> PrivateKey:
    """A new private key from the OS's random source."""
    return private_key_from_seed(os.urandom(32))


def public_key_bytes(private_key: PrivateKey) -> bytes:
    return private_key.public


def signed_bytes(key_id: str, readings: Sequence[Any]) -> bytes:
    """The exact bytes a device signs: ``JCS({"key_id": key_id, "readings": readings})``.

    Written from one template per reading (:func:`device_reading_json`) when the key id and every
    reading are in the plain domain (always, for schema-valid readings): the same bytes as the
    generic canonicalisation, which stays the path for anything else (tests/test_canonical_fast.py).
    """
    if type(key_id) is str and KEY_ID.fullmatch(key_id):
        parts = [device_reading_json(r) for r in readings]
        if None not in parts:
            return signed_envelope(key_id, parts)  # type: ignore[arg-type]
    return canonical_json({"key_id": key_id, "readings": list(readings)})


def signed_envelope(key_id: str, reading_texts: Sequence[str]) -> bytes:
    """``JCS({"key_id": key_id, "readings": [...]})`` around readings already written as JCS
    text: the one spelling of the signed object, shared by the device's writer
    (``devices/wire.py``), the bridge's validation and :func:`signed_bytes`. ``key_id`` must
    match :data:`KEY_ID` (plain ASCII, nothing JCS escapes)."""
    return f'{{"key_id":"{key_id}","readings":[{",".join(reading_texts)}]}}'.encode("ascii")


def sign_bytes(private_key: PrivateKey, data: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``data`` (deterministic: RFC 8032 section 5.1.6)."""
    return private_key.sign(data)


def sign_message(private_key: PrivateKey, key_id: str, readings: Sequence[Any]) -> str:
    """The device side: the base64url Ed25519 signature of :func:`signed_bytes`."""
    return b64url(sign_bytes(private_key, signed_bytes(key_id, readings)))


def load_public_key(public_key: bytes) -> PublicKey:
    """A checked public key: 32 bytes that are the canonical encoding of a point of the
    prime-order subgroup. Refused: points off the curve, non-canonical encodings (y >= p), and
    small-order or mixed-order points (a small-order key lets one signature verify for many
    messages without any private key; OpenSSL accepts such keys, libsodium refuses them at
    verification; no key a device generates is one). Checked once per key, not per message."""
    if type(public_key) is not bytes or len(public_key) != 32:
        raise SignatureError("not an Ed25519 public key: it must be 32 bytes")
    return _checked_point(public_key)


@functools.lru_cache(maxsize=1 << 16)
def _checked_point(public_key: bytes) -> PublicKey:
    """The point check (~40 us) once per distinct key: the bridge's keyring reloads every key
    when the key file changes (a refusal raises, and is not cached)."""
    if not _sodium.crypto_core_ed25519_is_valid_point(public_key):
        raise SignatureError("not an Ed25519 public key: not the canonical encoding of a point "
                             "of the prime-order subgroup (off the curve, small or mixed order)")
    return PublicKey(public_key)


def verify_bytes(public_key: PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` (64 bytes) is a valid Ed25519 signature of ``data`` under the
    checked ``public_key``, by the rule in this module's docstring (both libraries agree)."""
    if len(signature) != 64 or int.from_bytes(signature[32:], "little") >= GROUP_ORDER:
        return False  # S >= L: a malleated signature (refused by both, checked here anyway)
    try:
        _sodium.crypto_sign_open(signature + data, public_key.raw)
    except (BadSignatureError, CryptoError):
        return False
    return True


def check_signature(public_key: PublicKey, key_id: str, signature_b64: Any,
                    readings: Sequence[Any], data: bytes | None = None) -> None:
    """Raise :class:`SignatureError` unless ``signature_b64`` signs ``(key_id, readings)``.

    ``data``: :func:`signed_bytes` of them when the caller has already written it from readings
    it checked (the bridge's validation: ``validation.SignedReadings``)."""
    signature = from_b64url(signature_b64, 64, "signature")
    if data is None:
        try:
            data = signed_bytes(key_id, readings)
        except CanonicalError as exc:
            raise SignatureError(f"readings cannot be canonicalised: {exc}") from None
    if not verify_bytes(public_key, signature, data):
        raise SignatureError("signature does not verify with the device's key")


def build_key_entry(seq: int, ts_us: int, action: str, device_id: str,
                    public_key: bytes) -> dict[str, Any]:
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}")
    return {"format": ENTRY_FORMAT, "seq": seq, "ts_us": ts_us, "action": action,
            "device_id": device_id, "key_id": key_id_of(public_key), "alg": ALG,
            "public_key": b64url(public_key)}


def entry_public_key(entry: Mapping[str, Any]) -> bytes:
    """The raw public key of a key entry, checked against its key id; raises SignatureError."""
    if entry.get("format") != ENTRY_FORMAT or entry.get("alg") != ALG:
        raise SignatureError(f"key entry must have format {ENTRY_FORMAT!r} and alg {ALG!r}")
    raw = from_b64url(entry.get("public_key"), 32, "public_key")
    if entry.get("key_id") != key_id_of(raw):
        raise SignatureError("key entry's key_id is not SHA-256(public_key)[:16]")
    return raw


def key_entry_leaf(entry: Mapping[str, Any]) -> bytes:
    """The leaf hash of a key entry: ``BLAKE3(0x00 || JCS(entry))`` (as an access entry's)."""
    return entry_leaf(entry)


def build_key_window_header(entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The header of the device-key window holding ``entries`` (consecutive ``seq``, in order)."""
    return entry_window_header(entries, WINDOW_FORMAT, KEY_TOPIC, KEY_PARTITION)


def build_key_proof(entry: Mapping[str, Any], index: int, leaf_hashes: Sequence[bytes],
                    window_header: Mapping[str, Any], window_index: int, checkpoint_size: int,
                    window_path: Sequence[bytes]) -> dict[str, Any]:
    """The ``device_key`` member of a ``vitalchain-proof/2`` bundle: the key's registration entry,
    its path in its device-key window, the window header and the window's path in the log (to
    the bundle's own checkpoint)."""
    return {
        "entry": dict(entry),
        "entry_proof": {"index": index, "size": len(leaf_hashes),
                        "path": [p.hex() for p in inclusion_proof(list(leaf_hashes), index)]},
        "window": dict(window_header),
        "window_proof": {"index": window_index, "size": checkpoint_size,
                         "path": [p.hex() for p in window_path]},
    }
