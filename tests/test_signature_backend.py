"""The Ed25519 backend (libsodium through PyNaCl) against OpenSSL (``cryptography``) and RFC 8032.

Why: devices sign and the bridge and the offline verifier check with one backend
(vitalchain.core.integrity.devicekeys). Changing the library must change no signature (Ed25519 is
deterministic) and no verdict a user could tell apart: a signature is accepted only where both
libraries would accept it (docs/DECISIONS.md D42). ``cryptography`` is only the reference here.
"""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as sodium
from nacl.exceptions import BadSignatureError

from vitalchain.core.integrity.devicekeys import (
    GROUP_ORDER,
    PublicKey,
    SignatureError,
    b64url,
    check_signature,
    generate_private_key,
    key_id_of,
    load_public_key,
    private_key_from_seed,
    sign_bytes,
    sign_message,
    verify_bytes,
)

# RFC 8032 section 7.1, TEST 1..3: (seed, public key, message, signature).
RFC8032 = [
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
     "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
     "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
     "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
]
IDENTITY = bytes([1]) + bytes(31)  # the neutral point (order 1)
ORDER_2 = bytes([0xEC]) + b"\xff" * 30 + bytes([0x7F])  # (0, -1), order 2
P = 2**255 - 19


def openssl_accepts(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def ours_accept(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        key = load_public_key(public)
    except SignatureError:
        return False
    return verify_bytes(key, signature, message)


@pytest.mark.parametrize(("seed", "public", "message", "signature"), RFC8032)
def test_rfc8032_vectors(seed: str, public: str, message: str, signature: str) -> None:
    key = private_key_from_seed(bytes.fromhex(seed))
    assert key.public.hex() == public
    assert sign_bytes(key, bytes.fromhex(message)).hex() == signature
    assert ours_accept(bytes.fromhex(public), bytes.fromhex(signature), bytes.fromhex(message))
    assert openssl_accepts(bytes.fromhex(public), bytes.fromhex(signature), bytes.fromhex(message))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=3000))
def test_signatures_are_byte_identical_to_openssl_and_cross_verify(seed: bytes,
                                                                     message: bytes) -> None:
    ours = private_key_from_seed(seed)
    reference = Ed25519PrivateKey.from_private_bytes(seed)
    signature = ours.sign(message)
    assert signature == reference.sign(message)
    assert ours_accept(ours.public, signature, message)
    assert openssl_accepts(ours.public, signature, message)
    # and a signature of another message is refused by both
    other = message + b"x"
    assert not ours_accept(ours.public, signature, other)
    assert not openssl_accepts(ours.public, signature, other)


def test_a_non_canonical_s_is_refused_by_both() -> None:
    """S + L satisfies the equation (malleability); RFC 8032 5.1.7 requires S < L."""
    key = generate_private_key()
    message = b"vitals"
    signature = key.sign(message)
    s = int.from_bytes(signature[32:], "little")
    malleated = signature[:32] + (s + GROUP_ORDER).to_bytes(32, "little")
    assert not ours_accept(key.public, malleated, message)
    assert not openssl_accepts(key.public, malleated, message)
    with pytest.raises(BadSignatureError):  # libsodium alone, without our own S check
        sodium.crypto_sign_open(malleated + message, key.public)


def test_a_small_order_public_key_is_refused_though_openssl_accepts_its_forgery() -> None:
    """The identity key with R = identity, S = 0 'verifies' for every message under the
    cofactorless equation: OpenSSL accepts it, libsodium refuses it, so do we (at load)."""
    forged = IDENTITY + bytes(32)
    for message in (b"", b"any message at all"):
        assert openssl_accepts(IDENTITY, forged, message)  # why the rule is ours, not a library's
        assert not ours_accept(IDENTITY, forged, message)
        with pytest.raises(BadSignatureError):
            sodium.crypto_sign_open(forged + message, IDENTITY)
        # and even a key object made without the load check does not verify it
        assert not verify_bytes(PublicKey(IDENTITY), forged, message)
    for small in (IDENTITY, ORDER_2):
        with pytest.raises(SignatureError, match="prime-order subgroup"):
            load_public_key(small)


def test_non_canonical_and_mixed_order_keys_are_refused() -> None:
    # y = p + 1: a second encoding of the identity (y >= p is not canonical).
    non_canonical = (P + 1).to_bytes(32, "little")
    with pytest.raises(SignatureError):
        load_public_key(non_canonical)
    # A honest key plus the point of order 2: on the curve, canonical, but not of prime order.
    honest = generate_private_key().public
    mixed = sodium.crypto_core_ed25519_add(honest, ORDER_2)
    assert mixed != honest
    with pytest.raises(SignatureError, match="prime-order subgroup"):
        load_public_key(mixed)
    load_public_key(honest)  # the honest one loads
    with pytest.raises(SignatureError, match="32 bytes"):
        load_public_key(honest[:31])


def test_check_signature_on_messages_and_repr_keeps_the_seed_out() -> None:
    key = generate_private_key()
    kid = key_id_of(key.public)
    readings = [{"device_id": "w", "patient_id": "p", "seq": 1, "ts_us": 1_767_225_600_000_000,
                 "vitals": {"hr": 70, "spo2": 97, "rr": 15, "temp_c": 36.8, "sys": 120,
                            "dia": 80}}]
    sig = sign_message(key, kid, readings)
    check_signature(load_public_key(key.public), kid, sig, readings)
    with pytest.raises(SignatureError, match="does not verify"):
        check_signature(load_public_key(key.public), kid, sig, [dict(readings[0], seq=2)])
    assert b64url(key.seed) not in repr(key) and key.seed.hex() not in repr(key)
