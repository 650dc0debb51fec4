"""vitalchain's integrity core: canonical leaves, salts, RFC 9162 trees, windows, bundles.

Pure computation, no I/O (the salt key file is read by :mod:`vitalchain.storage.saltkey`).  Formats are specified in
``docs/PROOFS.md``; the checking side is :mod:`vitalchain.core.verify`.

Public API (all hashes are ``bytes`` unless named ``*_hex``; BLAKE3 unless a ``hasher`` is
given):

- ``blake3_hasher``, ``sha256_hasher``, ``Hasher``, ``get_hasher(name)``
- ``canonical_json(obj) -> bytes``  (RFC 8785; raises ``CanonicalError``)
- ``canonical_reading(reading, salt_key) -> dict``  (device fields + ``salt``)
- ``reading_leaf_hash(reading, hasher=blake3_hasher) -> bytes``
- ``window_leaf_hash(header, hasher=blake3_hasher) -> bytes``
- ``derive_salt(key: bytes, device_id: str, seq: int) -> str``
- ``salt_key_id(key: bytes) -> str``
- ``build_window_header(readings, *, partition, first_offset, last_offset, salt_key_id,
  late=0, leaf_hashes=None, hasher=blake3_hasher, epoch=0) -> dict``;
  ``header_epoch(header) -> int``; ``window_id(partition, first_offset, epoch=0) -> str``
- ``MerkleLog(leaves=(), hasher=blake3_hasher)``: ``append``, ``extend``, ``size``, ``leaf``,
  ``root(size=None)``, ``checkpoint(size=None)``, ``inclusion_proof(index, size=None)``,
  ``consistency_proof(old_size, new_size=None)``
- ``root(leaves, hasher)``, ``inclusion_proof(leaves, index, hasher)``,
  ``consistency_proof(leaves, old_size, hasher)``, ``root_from_inclusion_proof(leaf, index,
  size, path, hasher)``, ``verify_inclusion(leaf, index, size, path, root, hasher)``,
  ``verify_consistency(old_size, new_size, old_root, new_root, proof, hasher)``
  (the ``verify_*`` raise ``ProofError``)
- ``build_bundle(reading, reading_index, reading_leaf_hashes, window_header, window_index,
  log, checkpoint_size, anchor=None) -> dict``
"""

from .bundle import ANCHOR_FIELDS, PROOF_FORMAT, build_bundle
from .canonical import MAX_SAFE_INTEGER, CanonicalError, canonical_json
from .hashing import Hasher, blake3_hasher, get_hasher, sha256_hasher
from .leaves import READING_FIELDS, canonical_reading, reading_leaf_hash, window_leaf_hash
from .log import MerkleLog
from .merkle import (
    ProofError,
    RootMismatchError,
    consistency_proof,
    inclusion_proof,
    root,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from .salt import derive_salt, salt_key_id
from .window import WINDOW_FORMAT, build_window_header, header_epoch, window_id

__all__ = [
    "ANCHOR_FIELDS",
    "MAX_SAFE_INTEGER",
    "PROOF_FORMAT",
    "READING_FIELDS",
    "WINDOW_FORMAT",
    "CanonicalError",
    "Hasher",
    "MerkleLog",
    "ProofError",
    "RootMismatchError",
    "blake3_hasher",
    "build_bundle",
    "build_window_header",
    "canonical_json",
    "canonical_reading",
    "consistency_proof",
    "derive_salt",
    "get_hasher",
    "header_epoch",
    "inclusion_proof",
    "reading_leaf_hash",
    "root",
    "root_from_inclusion_proof",
    "salt_key_id",
    "sha256_hasher",
    "verify_consistency",
    "verify_inclusion",
    "window_id",
    "window_leaf_hash",
]
