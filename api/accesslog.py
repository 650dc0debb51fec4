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
``checkpoint``, ``anchor``.  :func:`verify_access_proof` checks it offline.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from vitalchain.api.logview import LogView

from vitalchain.core.integrity import (
    ProofError,
    blake3_hasher,
    canonical_json,
    inclusion_proof,
    root,
    verify_inclusion,
    window_leaf_hash,
)
from vitalchain.storage.apistore import AccessRow, ApiStore, now_us
from vitalchain.storage.ledger import Ledger, LedgerError

ACCESS_TOPIC = "access-log"
ACCESS_PARTITION = 0
ENTRY_FORMAT = "vitalchain-access/1"
WINDOW_FORMAT = "vitalchain-access-window/1"
PROOF_FORMAT = "vitalchain-access-proof/1"
MAX_WINDOW = 1000


class AccessProofUnavailable(LookupError):
    """No proof: unknown entry, or the stored entry no longer matches what was sealed."""


def entry_leaf(entry: dict[str, Any]) -> bytes:
    return blake3_hasher.leaf(canonical_json(entry))


def build_entry(seq: int, *, ts_us: int, user: str | None, role: str | None, method: str,
                path: str, query: str, patient_id: str | None, allowed: bool, status: int,
                reason: str) -> dict[str, Any]:
    return {"format": ENTRY_FORMAT, "seq": seq, "ts_us": ts_us, "user": user, "role": role,
            "method": method, "path": path[:512], "query": query[:1024],
            "patient_id": patient_id, "allowed": allowed, "status": status,
            "reason": reason[:512], "nonce": secrets.token_hex(16)}


def access_window_header(rows: list[AccessRow]) -> dict[str, Any]:
    stamps = [r.entry["ts_us"] for r in rows]
    return {"format": WINDOW_FORMAT, "window_id": f"access-{rows[0].seq}",
            "partition": ACCESS_PARTITION, "first_offset": rows[0].seq,
            "last_offset": rows[-1].seq, "start_us": min(stamps), "end_us": max(stamps),
            "size": len(rows), "root": root([r.leaf_hash for r in rows]).hex()}


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
            raise AccessProofUnavailable(f"access window {row.window_id} is not in the ledger")
        index = seq - int(window.header["first_offset"])
        if not 0 <= index < len(window.leaf_hashes):
            raise AccessProofUnavailable(f"entry {seq} is outside window {row.window_id}")
        if entry_leaf(row.entry) != window.leaf_hashes[index]:
            raise AccessProofUnavailable(
                f"access entry {seq} no longer hashes to the leaf sealed in window "
                f"{row.window_id}: it was altered after sealing")
        choice = self.view.checkpoint_for(window.log_index)
        return {
            "format": PROOF_FORMAT,
            "hash": "blake3",
            "entry": row.entry,
            "entry_proof": {"index": index, "size": len(window.leaf_hashes),
                            "path": [p.hex() for p in inclusion_proof(window.leaf_hashes, index)]},
            "window": window.header,
            "window_proof": {"index": window.log_index, "size": choice.size,
                             "path": [p.hex() for p in
                                      self.view.log.inclusion_proof(window.log_index, choice.size)]},
            "checkpoint": {"size": choice.size, "root": choice.root},
            "anchor": choice.anchor,
        }


@dataclass
class AccessProofReport:
    steps: list[dict[str, str]] = field(default_factory=list)

    def add(self, step: str, ok: bool, detail: str) -> bool:
        self.steps.append({"step": step, "status": "ok" if ok else "failed", "detail": detail})
        return ok

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s["status"] == "ok" for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        failed = next((s for s in self.steps if s["status"] != "ok"), None)
        summary = ("hashes valid, anchor not checked" if self.ok else
                   f"hashes INVALID: step {failed['step']} failed ({failed['detail']})" if failed
                   else "nothing checked")
        return {"status": "valid" if self.ok else "invalid",
                "failed_step": failed["step"] if failed else None,
                "anchor_checked": False, "summary": summary, "steps": self.steps}


def _hexes(values: Any) -> list[bytes]:
    if not isinstance(values, list) or not all(isinstance(v, str) and len(v) == 64 for v in values):
        raise ValueError("path must be a list of 64-hex-character hashes")
    return [bytes.fromhex(v) for v in values]


def verify_access_proof(doc: Any) -> AccessProofReport:
    """Check an access proof offline (hashes only; the anchor is checked like a bundle's)."""
    report = AccessProofReport()
    try:
        if not isinstance(doc, dict) or doc.get("format") != PROOF_FORMAT or doc.get("hash") != "blake3":
            raise ValueError(f"format must be {PROOF_FORMAT} with hash blake3")
        entry, window = doc["entry"], doc["window"]
        ep, wp, cp = doc["entry_proof"], doc["window_proof"], doc["checkpoint"]
        if not all(isinstance(x, dict) for x in (entry, window, ep, wp, cp)):
            raise ValueError("entry, window, proofs and checkpoint must be objects")
        entry_path, window_path = _hexes(ep["path"]), _hexes(wp["path"])
        window_root, cp_root = bytes.fromhex(window["root"]), bytes.fromhex(cp["root"])
    except (KeyError, TypeError, ValueError) as exc:
        report.add("format", False, f"unreadable access proof: {exc}")
        return report
    report.add("format", True, PROOF_FORMAT)
    try:
        leaf = entry_leaf(entry)
        if entry.get("format") != ENTRY_FORMAT or window.get("format") != WINDOW_FORMAT:
            raise ProofError("entry or window has the wrong format")
        if ep["size"] != window["size"]:
            raise ProofError("entry_proof.size differs from window.size")
        verify_inclusion(leaf, ep["index"], ep["size"], entry_path, window_root)
        report.add("entry-inclusion", True, f"entry {entry.get('seq')} is leaf {ep['index']}")
    except (ProofError, ValueError, TypeError) as exc:
        report.add("entry-inclusion", False, str(exc) or type(exc).__name__)
        return report
    if not (window["first_offset"] <= entry["seq"] <= window["last_offset"]
            and window["start_us"] <= entry["ts_us"] <= window["end_us"]
            and entry["seq"] - window["first_offset"] == ep["index"]):
        report.add("window-contents", False, "entry seq/time/index outside the window's ranges")
        return report
    report.add("window-contents", True, "seq and time within the window")
    try:
        if wp["size"] != cp["size"]:
            raise ProofError("window_proof.size differs from checkpoint.size")
        verify_inclusion(window_leaf_hash(window), wp["index"], wp["size"], window_path, cp_root)
        report.add("checkpoint", True, f"window is leaf {wp['index']} of the log at size {cp['size']}")
    except (ProofError, ValueError, TypeError) as exc:
        report.add("checkpoint", False, str(exc) or type(exc).__name__)
    return report
