"""RFC 9162 section 2.1 Merkle trees: roots, inclusion and consistency proofs, and checks.

Small and exact, in the style of transparency-dev/merkle: plain functions over a list of leaf
*hashes* (the caller decides what a leaf is), with the :class:`~.hashing.Hasher` as a parameter
so the same code runs with BLAKE3 in production and SHA-256 against the RFC test vectors.

Proof *production* walks the tree top-down exactly as the RFC's recursive ``PATH`` and
``SUBPROOF`` definitions do, asking a ``subtree(lo, hi)`` callback for the hash of each sibling
range.  Over a plain list that callback hashes the slice; :class:`~.log.MerkleLog` answers it
from cached complete subtrees instead, which is what makes proofs over a million leaves cheap.
Proof *verification* is the RFC's iterative algorithm (2.1.3.2 and 2.1.4.2) verbatim; it needs
no tree at all, which is why :mod:`vitalchain.core.verify` depends on this module alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vitalchain.errors import InvalidInput

from .hashing import Hasher, blake3_hasher

SubtreeHash = Callable[[int, int], bytes]


class ProofError(InvalidInput):
    """A proof does not verify; the message says why (wrong shape, or a root mismatch)."""


class RootMismatchError(ProofError):
    """The proof is well formed but leads to a different root than the one claimed."""


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (RFC 9162's ``k``); ``n >= 2``."""
    if n < 2:
        raise ValueError(f"split_point needs n >= 2, got {n}")
    return 1 << ((n - 1).bit_length() - 1)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# --- production ----------------------------------------------------------------------------


def root(leaves: Sequence[bytes], hasher: Hasher = blake3_hasher) -> bytes:
    """``MTH(D[n])`` of the leaf hashes; ``H()`` for no leaves.

    Built level by level, pairing neighbours and carrying an odd last node up unchanged; that
    is the same tree as the RFC's "split at the largest power of two" recursion (the tests check
    both against each other) but runs in O(n) without recursion.
    """
    if not leaves:
        return hasher.empty()
    digest = hasher.digest
    level = list(leaves)
    while len(level) > 1:
        nxt = [digest(b"\x01" + level[i] + level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def inclusion_path(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """RFC 9162 ``PATH(index, D[size])`` using ``subtree(lo, hi)`` for sibling hashes.

    The path is ordered from the leaf's sibling up to the root's other child.
    """
    if not 0 <= index < size:
        raise ValueError(f"index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = split_point(hi - lo)
        if index < lo + k:
            path.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            path.append(subtree(lo, lo + k))
            lo += k
    path.reverse()
    return path


def consistency_path(old_size: int, new_size: int, subtree: SubtreeHash) -> list[bytes]:
    """RFC 9162 ``PROOF(old_size, D[new_size])`` using ``subtree(lo, hi)``.

    Empty when ``old_size`` is 0 or equal to ``new_size`` (nothing to prove), as in
    transparency-dev/merkle.
    """
    if not 0 <= old_size <= new_size:
        raise ValueError(f"need 0 <= old_size <= new_size, got {old_size}, {new_size}")
    if old_size == 0 or old_size == new_size:
        return []
    proof: list[bytes] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while True:
        if m == hi - lo:
            if not complete:
                proof.append(subtree(lo, hi))
            break
        k = split_point(hi - lo)
        if m <= k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo += k
            m -= k
            complete = False
    proof.reverse()
    return proof


def _slice_subtree(leaves: Sequence[bytes], hasher: Hasher) -> SubtreeHash:
    return lambda lo, hi: root(leaves[lo:hi], hasher)


def inclusion_proof(
    leaves: Sequence[bytes], index: int, hasher: Hasher = blake3_hasher
) -> list[bytes]:
    """Audit path for ``leaves[index]`` in the tree over all of ``leaves`` (O(n))."""
    return inclusion_path(index, len(leaves), _slice_subtree(leaves, hasher))


def consistency_proof(
    leaves: Sequence[bytes], old_size: int, hasher: Hasher = blake3_hasher
) -> list[bytes]:
    """Proof that the tree over ``leaves[:old_size]`` is a prefix of the tree over ``leaves``."""
    return consistency_path(old_size, len(leaves), _slice_subtree(leaves, hasher))


# --- verification --------------------------------------------------------------------------


def _check_hashes(hasher: Hasher, what: str, values: Sequence[bytes]) -> None:
    for i, value in enumerate(values):
        if not isinstance(value, bytes | bytearray) or len(value) != hasher.digest_size:
            raise ProofError(f"{what}[{i}] is not a {hasher.digest_size}-byte hash")


def _check_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProofError(f"{name} must be an integer, not {type(value).__name__}")
    return value


def root_from_inclusion_proof(
    leaf_hash: bytes,
    index: int,
    size: int,
    path: Sequence[bytes],
    hasher: Hasher = blake3_hasher,
) -> bytes:
    """The root that ``path`` leads to from ``leaf_hash`` at ``index`` of a ``size``-leaf tree.

    RFC 9162 section 2.1.3.2 steps 1-5, without the final comparison.  Raises
    :class:`ProofError` if the path cannot be a proof for that position (index out of range,
    path too short or too long, an element that is not a hash).
    """
    index, size = _check_int("index", index), _check_int("size", size)
    if size < 1:
        raise ProofError(f"size {size}: an inclusion proof needs a non-empty tree")
    if not 0 <= index < size:
        raise ProofError(f"index {index} is not below size {size}")
    _check_hashes(hasher, "leaf", [leaf_hash])
    _check_hashes(hasher, "path", path)
    fn, sn = index, size - 1
    r = bytes(leaf_hash)
    for p in path:
        if sn == 0:
            raise ProofError(f"path is too long for index {index} in size {size}")
        if fn & 1 or fn == sn:
            r = hasher.node(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = hasher.node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"path is too short for index {index} in size {size}")
    return r


def verify_inclusion(
    leaf_hash: bytes,
    index: int,
    size: int,
    path: Sequence[bytes],
    root_hash: bytes,
    hasher: Hasher = blake3_hasher,
) -> None:
    """Check an inclusion proof (RFC 9162 2.1.3.2); raises :class:`ProofError`, else None.

    Note: the path binds the leaf, its index and the root, but not ``size`` by itself: some
    (index, size) pairs share a path shape (index 5 in sizes 7 and 8).  The size must be bound
    by what the root is trusted through (the window header, the anchored checkpoint).
    """
    computed = root_from_inclusion_proof(leaf_hash, index, size, path, hasher)
    if computed != root_hash:
        raise RootMismatchError(
            f"path leads to root {computed.hex()}, expected {bytes(root_hash).hex()}"
        )


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
    hasher: Hasher = blake3_hasher,
) -> None:
    """Check that the ``old_size`` tree is a prefix of the ``new_size`` tree (RFC 9162 2.1.4.2).

    Raises :class:`ProofError`, else returns None.  Equal sizes need an empty proof and equal
    roots; old size 0 needs an empty proof and the empty-tree root.
    """
    old_size, new_size = _check_int("old_size", old_size), _check_int("new_size", new_size)
    if old_size < 0 or new_size < old_size:
        raise ProofError(f"need 0 <= old_size <= new_size, got {old_size}, {new_size}")
    _check_hashes(hasher, "roots", [old_root, new_root])
    _check_hashes(hasher, "proof", proof)
    if old_size == new_size:
        if proof:
            raise ProofError("equal sizes need an empty proof")
        if old_root != new_root:
            raise RootMismatchError("equal sizes but different roots")
        return
    if old_size == 0:
        if proof:
            raise ProofError("old size 0 needs an empty proof")
        if old_root != hasher.empty():
            raise RootMismatchError("old size 0 but old root is not the empty-tree hash")
        return
    if not proof:
        raise ProofError("empty consistency proof for different non-zero sizes")
    path = list(proof)
    if _is_pow2(old_size):
        path.insert(0, bytes(old_root))
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = hasher.node(c, fr)
            sr = hasher.node(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = hasher.node(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root:
        raise RootMismatchError(f"proof leads to old root {fr.hex()}, expected {old_root.hex()}")
    if sr != new_root:
        raise RootMismatchError(f"proof leads to new root {sr.hex()}, expected {new_root.hex()}")
