"""The one in-memory mirror of the ledger's window log.

The anchoring worker, the proof service, the API and the audit all need the RFC 9162 tree over the
window log (roots at checkpoint sizes, inclusion and consistency proofs). Each keeps a
:class:`LogMirror` that follows the ledger and reads only the leaves appended since its last sync
(``leaf_hashes(start, end)``), so a sync costs what was appended, not the whole log.
"""

from __future__ import annotations

import threading
from typing import Protocol

from vitalchain.core.integrity import MerkleLog


class WindowLogSource(Protocol):
    """What a mirror reads: the ledger (:class:`~vitalchain.storage.ledger.Ledger`) or its read-only view."""

    def log_size(self) -> int: ...

    def leaf_hashes(self, start: int, end: int) -> list[bytes]: ...


class LogMirror:
    """A :class:`MerkleLog` kept equal to a prefix of the ledger's window log; safe across threads."""

    def __init__(self, source: WindowLogSource) -> None:
        self.source = source
        self.log = MerkleLog()
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.log.size

    def sync(self) -> int:
        """Append the leaves sealed since the last sync; return the mirrored log size."""
        with self._lock:
            size = self.source.log_size()
            if size > self.log.size:
                self.log.extend(self.source.leaf_hashes(self.log.size, size))
            return self.log.size
