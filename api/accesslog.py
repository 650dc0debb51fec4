"""The tamper-evident access log: who asked for what, when, and whether it was allowed.

Each request's entry is stored in ``api.sqlite`` at once (so nothing is lost if the process
dies), then sealed in batches into *access windows* appended to the ledger's window log, the
same log whose checkpoints are anchored on chain.  An access window is fenced like a reading
window, on the pseudo-topic ``access-log`` partition 0 with offsets = entry sequence numbers,
so two API processes sealing the same entries either agree (idempotent) or one is refused.

Entry (hashed as ``H(0x00 || JCS(entry))``, like a reading):
``{"format": "vitalchain-access/1", "seq", "ts_us", "user", "role", "method", "path",
"query", "patient_id", "allowed", "status", "reason", "nonce"}``.  The random ``nonce`` keeps the
leaf hashes in the (shareable) ledger from being brute-forced back into who-saw-whom: the
other fields are guessable.  Window header: ``{"format": "vitalchain-access-window/1",
"window_id": "access-<first seq>", "partition": 0, "first_offset", "last_offset", "start_us",
"end_us", "size", "root"}``.

Proof document ``vitalchain-access-proof/1`` mirrors the reading bundle: ``entry``,
``entry_proof`` (in the window's tree), ``window``, ``window_proof`` (in the log),
``checkpoint``, ``anchor``; :func:`vitalchain.core.verify.verify_access_proof` checks it.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

from vitalchain.api.logview import LogView
from vitalchain.core.integrity.access import (
    ACCESS_PARTITION,
    ACCESS_TOPIC,
    ENTRY_FORMAT,
    build_access_proof,
    build_access_window_header,
    entry_leaf,
)
from vitalchain.core.timeutil import now_us
from vitalchain.errors import Altered, NotFound
from vitalchain.storage.apistore import AccessRow, ApiStore
from vitalchain.storage.ledger import Ledger, LedgerError

MAX_WINDOW = 1000


class AccessProofUnavailable(NotFound):
    """No proof: unknown entry, or the stored entry no longer matches what was sealed."""


class AccessEntryAltered(Altered, AccessProofUnavailable):
    """The stored access entry or its window no longer matches what was sealed."""


def build_entry(seq: int, *, ts_us: int, user: str | None, role: str | None, method: str,
                path: str, query: str, patient_id: str | None, allowed: bool, status: int,
                reason: str) -> dict[str, Any]:
    return {"format": ENTRY_FORMAT, "seq": seq, "ts_us": ts_us, "user": user, "role": role,
            "method": method, "path": path[:512], "query": query[:1024],
            "patient_id": patient_id, "allowed": allowed, "status": status,
            "reason": reason[:512], "nonce": secrets.token_hex(16)}


def access_window_header(rows: list[AccessRow]) -> dict[str, Any]:
    return build_access_window_header([r.entry for r in rows])


def record_access(store: ApiStore, **fields: Any) -> AccessRow:
    """Store one entry now (unsealed); the API's sealer puts it into the ledger later."""
    ts = now_us()

    def build(seq: int) -> tuple[dict[str, Any], bytes]:
        entry = build_entry(seq, ts_us=ts, **fields)
        return entry, entry_leaf(entry)

    return store.add_access(build)


class AccessLog:
    def __init__(self, store: ApiStore, ledger: Ledger, view: LogView) -> None:
        self.store = store
        self.ledger = ledger
        self.view = view
        self._seal_lock = threading.Lock()

    def record(self, **fields: Any) -> AccessRow:
        return record_access(self.store, **fields)

    def _reconcile(self) -> None:
        """Mark entries the ledger already holds (a crash between append and mark)."""
        sealed = self.ledger.last_sealed_offset(ACCESS_TOPIC, ACCESS_PARTITION)
        pending = self.store.unsealed(1)
        if sealed is None or not pending or pending[0].seq > sealed:
            return
        for window in self.ledger.windows(topic=ACCESS_TOPIC):
            h = window.header
            self.store.mark_sealed(h["first_offset"], h["last_offset"], h["window_id"])

    def seal(self) -> list[str]:
        """Seal every unsealed entry into access windows; returns the new window ids."""
        sealed_ids: list[str] = []
        with self._seal_lock:
            self._reconcile()
            while True:
                rows = self.store.unsealed(MAX_WINDOW)
                if not rows:
                    return sealed_ids
                header = access_window_header(rows)
                try:
                    self.ledger.append_entry_window(ACCESS_TOPIC, ACCESS_PARTITION, header,
                                                    [r.leaf_hash for r in rows])
                except LedgerError:
                    # Another API process sealed (part of) these entries: adopt its windows.
                    self._reconcile()
                    if self.store.unsealed(1) and self.store.unsealed(1)[0].seq == rows[0].seq:
                        raise
                    continue
                self.store.mark_sealed(rows[0].seq, rows[-1].seq, header["window_id"])
                sealed_ids.append(header["window_id"])

    def proof(self, seq: int) -> dict[str, Any]:
        """The ``vitalchain-access-proof/1`` document of entry ``seq`` (sealing it if needed)."""
        row = self.store.access_entry(seq)
        if row is None:
            raise AccessProofUnavailable(f"no access entry {seq}")
        if row.window_id is None:
            self.seal()
            row = self.store.access_entry(seq)
            assert row is not None
        window = self.ledger.window_by_id(str(row.window_id))
        if window is None or window.topic != ACCESS_TOPIC:
            raise AccessEntryAltered(f"access window {row.window_id} is not in the ledger")
        index = seq - int(window.header["first_offset"])
        if not 0 <= index < len(window.leaf_hashes):
            raise AccessEntryAltered(f"entry {seq} is outside window {row.window_id}")
        if entry_leaf(row.entry) != window.leaf_hashes[index]:
            raise AccessEntryAltered(
                f"access entry {seq} no longer hashes to the leaf sealed in window "
                f"{row.window_id}: it was altered after sealing")
        choice = self.view.checkpoint_for(window.log_index)
        return build_access_proof(row.entry, index, window.leaf_hashes, window.header, window.log_index,
                                  self.view.log, choice.size, choice.root, choice.anchor)
