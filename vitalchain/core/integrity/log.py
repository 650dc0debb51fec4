"""An append-only RFC 9162 tree that answers roots and proofs for any past size quickly.

The window log grows one window at a time and must produce proofs against old checkpoints,
so recomputing from the leaf list per request (O(n)) is not acceptable at a million leaves.
Every *complete* subtree (``2**h`` leaves starting at a multiple of ``2**h``) is immutable once
its last leaf arrives, so we keep them all, level by level: ``levels[h][i]`` is the hash of
leaves ``[i * 2**h, (i + 1) * 2**h)``.  Appending costs amortised O(1) hashes; any node of the
RFC tree of any past size is a left-to-right chain of complete subtrees, so roots cost
O(log n) and proofs O(log² n) worst case, with no recursion over the leaf list.
"""

from __future__ import annotations

from collections.abc import Iterable

from .hashing import NODE_PREFIX, Hasher, blake3_hasher
from .merkle import consistency_path, inclusion_path, split_point


class MerkleLog:
    """Append-only Merkle log over leaf hashes, with the hash function as a parameter.

    Leaves are *leaf hashes* (already ``H(0x00 || data)``); use :meth:`append_data` to hash
    raw data.  Sizes passed to ``root``/``inclusion_proof``/``consistency_proof`` default to the
    current size and may be any past size.
    """

    def __init__(self, leaves: Iterable[bytes] = (), hasher: Hasher = blake3_hasher) -> None:
        self.hasher = hasher
        self._levels: list[list[bytes]] = [[]]
        self.extend(leaves)

    # --- growth --------------------------------------------------------------------------
    def append(self, leaf_hash: bytes) -> int:
        """Add one leaf hash; returns its index."""
        self._check_hash(leaf_hash)
        levels = self._levels
        index = len(levels[0])
        levels[0].append(bytes(leaf_hash))
        node, i, h = levels[0][index], index, 0
        while i & 1:
            node = self.hasher.node(levels[h][i - 1], node)
            h += 1
            i >>= 1
            if h == len(levels):
                levels.append([])
            levels[h].append(node)
        return index

    def append_data(self, data: bytes) -> int:
        """Hash ``data`` as a leaf (``H(0x00 || data)``) and append it; returns its index."""
        return self.append(self.hasher.leaf(data))

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add many leaf hashes at once, hashing each new level in one pass (bulk build)."""
        new = [bytes(h) for h in leaf_hashes]
        for h in new:
            self._check_hash(h)
        levels = self._levels
        levels[0].extend(new)
        digest = self.hasher.digest
        h = 0
        while len(levels[h]) >= 2:
            lower = levels[h]
            if h + 1 == len(levels):
                levels.append([])
            upper = levels[h + 1]
            start = 2 * len(upper)
            upper.extend(
                [
                    digest(NODE_PREFIX + lower[i] + lower[i + 1])
                    for i in range(start, len(lower) - 1, 2)
                ]
            )
            h += 1

    def _check_hash(self, value: bytes) -> None:
        if not isinstance(value, bytes | bytearray) or len(value) != self.hasher.digest_size:
            raise ValueError(f"a leaf must be a {self.hasher.digest_size}-byte hash")

    # --- reading -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def __len__(self) -> int:
        return self.size

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        return self._levels[0][index]

    @property
    def leaves(self) -> list[bytes]:
        """A copy of all leaf hashes, in order."""
        return list(self._levels[0])

    def _size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} is outside 0..{self.size}")
        return size

    def subtree(self, lo: int, hi: int) -> bytes:
        """Hash of the RFC 9162 subtree over leaves ``[lo, hi)`` (``hi > lo``).

        ``[lo, hi)`` must be a node of some RFC tree (as every range produced by the RFC
        recursion is): then its left part is a cached complete subtree and only the right
        edge is hashed.
        """
        width = hi - lo
        if width < 1 or hi > self.size:
            raise ValueError(f"[{lo}, {hi}) is not a non-empty range of the log")
        if width & (width - 1) == 0:
            if lo & (width - 1):
                raise ValueError(f"[{lo}, {hi}) is not a node of an RFC 9162 tree")
            h = width.bit_length() - 1
            return self._levels[h][lo >> h]
        k = split_point(width)
        return self.hasher.node(self.subtree(lo, lo + k), self.subtree(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        """``MTH`` of the first ``size`` leaves (default: all)."""
        size = self._size(size)
        return self.subtree(0, size) if size else self.hasher.empty()

    def checkpoint(self, size: int | None = None) -> dict[str, object]:
        """``{"size": n, "root": hex}`` for the first ``size`` leaves, as in a proof bundle."""
        size = self._size(size)
        return {"size": size, "root": self.root(size).hex()}

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path for leaf ``index`` in the tree of the first ``size`` leaves."""
        return inclusion_path(index, self._size(size), self.subtree)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Proof that the ``old_size`` tree is a prefix of the ``new_size`` tree."""
        return consistency_path(old_size, self._size(new_size), self.subtree)
