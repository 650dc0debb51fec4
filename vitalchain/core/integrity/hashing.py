"""Hash functions for the trees, as a small parameter object.

The tree code never names a hash function: it takes a :class:`Hasher`.  Production uses
BLAKE3; the tests run the same code with SHA-256 so that it can be checked against the
RFC 6962 / RFC 9162 test vectors and against ``pymerkle``, which only know the SHA family.
Domain separation follows RFC 9162 section 2.1.1: a leaf is ``H(0x00 || data)`` and an interior
node is ``H(0x01 || left || right)``, so no leaf can be passed off as an interior node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import blake3 as _blake3

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


@dataclass(frozen=True)
class Hasher:
    """A hash function with the RFC 9162 leaf/node prefixes applied.

    ``digest`` is the bare hash function ``bytes -> bytes``; ``name`` is what goes in a proof
    bundle's ``"hash"`` field.
    """

    name: str
    digest_size: int
    digest: Callable[[bytes], bytes]

    def leaf(self, data: bytes) -> bytes:
        """``H(0x00 || data)``: the hash of one leaf's input bytes."""
        return self.digest(LEAF_PREFIX + data)

    def node(self, left: bytes, right: bytes) -> bytes:
        """``H(0x01 || left || right)``: an interior node from its two children."""
        return self.digest(NODE_PREFIX + left + right)

    def empty(self) -> bytes:
        """``H()``: the root of the empty tree (RFC 9162 section 2.1.1)."""
        return self.digest(b"")


def _blake3_digest(data: bytes) -> bytes:
    return _blake3.blake3(data).digest()


def _sha256_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


blake3_hasher = Hasher(name="blake3", digest_size=32, digest=_blake3_digest)
sha256_hasher = Hasher(name="sha256", digest_size=32, digest=_sha256_digest)

HASHERS: dict[str, Hasher] = {h.name: h for h in (blake3_hasher, sha256_hasher)}


def get_hasher(name: str) -> Hasher:
    """Look a hasher up by its bundle name (``"blake3"`` or ``"sha256"``)."""
    try:
        return HASHERS[name]
    except KeyError:
        raise ValueError(f"unsupported hash {name!r}; known: {sorted(HASHERS)}") from None
