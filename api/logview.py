"""The window log as auditors see it: windows, checkpoints, and which checkpoint proves what.

Checkpoint choice follows the proof service (``anchor/proofs.py``): the largest *anchored*
checkpoint containing the window, else the largest recorded one, else the log's current size
(unanchored).  Every root handed out is recomputed from the ledger and compared with the recorded
one, so an edited ledger is refused rather than proven.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from vitalchain.anchor import chain
from vitalchain.config import Settings
from vitalchain.errors import Altered
from vitalchain.storage.anchors import AnchorStore, Checkpoint
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.logmirror import LogMirror


class LogAltered(Altered):
    """The ledger no longer produces a recorded checkpoint's root."""


@dataclass(frozen=True)
class CheckpointChoice:
    size: int
    root: str
    checkpoint: Checkpoint | None

    @property
    def anchor(self) -> dict[str, Any] | None:
        return self.checkpoint.anchor() if self.checkpoint is not None else None


class LogView:
    """Shared by request threads: the in-memory Merkle log is extended under a lock."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.ledger = ledger
        self.store = AnchorStore(settings.ledger_target)
        self.contract = chain.contract_address(settings) if settings.anchor_contract else None
        self.confirmations_required = settings.anchor_confirmations
        self.mirror = LogMirror(ledger)
        self.log = self.mirror.log
        self._lock = threading.RLock()  # also guards the AnchorStore connection

    def close(self) -> None:
        self.store.close()

    def sync(self) -> int:
        with self._lock:
            return self.mirror.sync()

    def checkpoints(self) -> list[Checkpoint]:
        with self._lock:
            return self.store.checkpoints(self.contract) if self.contract else []

    def checkpoint_for(self, log_index: int) -> CheckpointChoice:
        with self._lock:
            return self._checkpoint_for(log_index)

    def _checkpoint_for(self, log_index: int) -> CheckpointChoice:
        size = self.sync()
        if self.contract is not None:
            for statuses in (("anchored",), ()):
                cp = self.store.covering(self.contract, log_index, *statuses)
                if cp is not None:
                    if cp.size > size or self.log.root(cp.size).hex() != cp.root:
                        raise LogAltered(f"the ledger's root at size {cp.size} differs from the "
                                         f"recorded checkpoint root {cp.root}")
                    return CheckpointChoice(cp.size, cp.root, cp)
        return CheckpointChoice(size, self.log.root(size).hex(), None)

    def anchored_size(self) -> int:
        """Size of the largest anchored checkpoint, 0 if none; :class:`LogAltered` if the ledger
        no longer reproduces its root (then no reading may be called anchored)."""
        with self._lock:
            if self.contract is None:
                return 0
            cp = self.store.latest(self.contract, "anchored")
            if cp is None:
                return 0
            size = self.sync()
            if cp.size > size or self.log.root(cp.size).hex() != cp.root:
                raise LogAltered(f"the ledger's root at size {cp.size} differs from the anchored "
                                 f"checkpoint root {cp.root}")
            return cp.size

    def window_status(self, log_index: int, checkpoints: list[Checkpoint]) -> dict[str, Any]:
        """Anchor status of log leaf ``log_index`` given the contract's checkpoints."""
        covering = [c for c in checkpoints if c.size > log_index]
        anchored = [c for c in covering if c.status == "anchored"]
        if anchored:
            return {"status": "anchored", "checkpoint_size": anchored[0].size,
                    "tx_hash": anchored[0].tx_hash}
        mined = [c for c in covering if c.status == "mined"]
        if mined:  # in a block, not yet confirmed: not handed out as an anchor (may be reorged)
            return {"status": "pending-confirmation", "checkpoint_size": mined[0].size,
                    "tx_hash": mined[0].tx_hash, "confirmations": mined[0].confirmations or 0,
                    "confirmations_required": self.confirmations_required}
        live = [c for c in covering if c.status != "superseded"]
        if live:
            return {"status": live[0].status, "checkpoint_size": live[0].size, "tx_hash": None}
        return {"status": "unanchored", "checkpoint_size": None, "tx_hash": None}
