"""The proof service: ``vitalchain-proof/1`` bundles for readings (``/2`` for a reading that
came signed by its device: its signed message from InfluxDB, its key's registration from the
ledger's window log), consistency proofs for checkpoints.

Where each piece comes from, and why:

- the *reading* from InfluxDB (rebuilt by :mod:`vitalchain.storage.readings`): that is the stored data a
  bundle vouches for; if it no longer hashes to its sealed leaf the service refuses, naming the
  reading, rather than hand out a bundle that cannot verify;
- the window's *leaf hashes and header* from the ledger, never from InfluxDB: so a proof for one
  reading keeps working after *another* reading of the same window was altered in InfluxDB;
- the *checkpoint*: the latest anchored one that contains the window (status ``anchored``,
  i.e. mined with the configured confirmations); until there is one, a mined but unconfirmed
  checkpoint (status ``pending-confirmation``: its block could still be reorganised away, so
  its transaction is not handed out as an anchor yet), else the latest recorded checkpoint
  containing it, or the log's current size (status ``pending``); both with ``"anchor": null``
  (the verifier reports that as ``pending``).  Every root served is
  recomputed from the ledger and compared with the recorded checkpoint root, so an altered ledger
  is refused here too.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from vitalchain.anchor import chain
from vitalchain.config import Settings
from vitalchain.core.integrity import (
    build_bundle,
)
from vitalchain.core.integrity.bundle import build_consistency_document
from vitalchain.core.integrity.devicekeys import KEY_TOPIC, build_key_proof, key_entry_leaf
from vitalchain.devices.keys import key_rows
from vitalchain.errors import Altered, NotFound
from vitalchain.storage.anchors import AnchorStore, Checkpoint
from vitalchain.storage.influx import InfluxClient, quote_ident
from vitalchain.storage.ledger import Ledger, ReadingLocation
from vitalchain.storage.logmirror import LogMirror
from vitalchain.storage.readings import (
    READINGS_MEASUREMENT,
    SIGNED_MEASUREMENT,
    StoredReading,
    StoredReadingError,
    point_time_ns,
    signed_message_readings,
    signed_span,
    stored_leaf,
)


class ProofUnavailable(NotFound):
    """No proof can be built: unknown reading, missing data, or stored data that was altered."""


class ProofAltered(Altered, ProofUnavailable):
    """No proof, because what is stored disagrees with what was sealed (InfluxDB or the log altered)."""


PROOF_STATUSES = ("anchored", "pending-confirmation", "pending")


@dataclass(frozen=True)
class ProofResult:
    bundle: dict[str, Any]
    status: str  # one of PROOF_STATUSES
    checkpoint: Checkpoint | None
    confirmations_required: int = 0

    @property
    def confirmations(self) -> int | None:
        """Confirmations of the checkpoint's block (None unless mined)."""
        if self.checkpoint is None or self.status == "pending":
            return None
        return self.checkpoint.confirmations

    def summary(self) -> str:
        """One line for people: what this bundle proves now, and what to do if not enough."""
        size = self.bundle["checkpoint"]["size"]
        if self.status == "anchored":
            return f"anchored: checkpoint size {size}"
        if self.status == "pending-confirmation":
            return (f"pending-confirmation: checkpoint size {size} is mined with "
                    f"{self.confirmations or 0} of {self.confirmations_required} confirmations;"
                    " the bundle carries no anchor yet: fetch it again once confirmed")
        return f"pending: checkpoint size {size} (not anchored yet)"


def _check_device(device_id: str) -> str:
    if not isinstance(device_id, str) or not device_id or len(device_id) > 128:
        raise ValueError("device id must be a non-empty string of at most 128 characters")
    return device_id


def _check_nonneg(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


class ProofService:
    """Builds proofs from one ledger file and one InfluxDB database; keeps the log in memory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ledger = Ledger(settings.ledger_target)
        self.store = AnchorStore(settings.ledger_target)
        self.contract = (chain.contract_address(settings) if settings.anchor_contract else None)
        self.mirror = LogMirror(self.ledger)
        self.log = self.mirror.log
        self._influx = InfluxClient(settings)
        self._loop = asyncio.new_event_loop()

    def close(self) -> None:
        self._loop.run_until_complete(self._influx.close())
        self._loop.close()
        self.ledger.close()
        self.store.close()

    def __enter__(self) -> ProofService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- pieces -----------------------------------------------------------------------------
    def _stored_reading(self, loc: ReadingLocation) -> tuple[StoredReading, bytes]:
        time_ns = point_time_ns(loc.ts_us, loc.seq)
        q = (f"SELECT * FROM {quote_ident(READINGS_MEASUREMENT)} "
             f"WHERE \"device_id\" = $device AND time = {time_ns}")
        rows = self._loop.run_until_complete(self._influx.query(q, {"device": loc.device_id}))
        rows = [r for r in rows if r.get("seq") == loc.seq]
        if not rows:
            raise ProofUnavailable(f"reading {loc.device_id}/{loc.seq} is sealed in window "
                                   f"{loc.window_id} but missing from InfluxDB")
        try:
            return stored_leaf(rows[0])
        except StoredReadingError as exc:
            raise ProofAltered(f"reading {loc.device_id}/{loc.seq} in InfluxDB is "
                                   f"malformed: {exc}") from exc

    def _checkpoint_for(self, log_index: int, log_size: int) -> tuple[int, Checkpoint | None]:
        if self.contract is not None:
            for statuses in (("anchored",), ("mined",), ()):
                cp = self.store.covering(self.contract, log_index, *statuses)
                if cp is not None:
                    if cp.size > log_size or self.log.root(cp.size).hex() != cp.root:
                        raise ProofAltered(
                            f"the ledger's root at size {cp.size} differs from the recorded "
                            f"checkpoint root {cp.root}: the window log was altered")
                    return cp.size, cp
        return log_size, None

    def locate(self, device_id: str, seq: int | None = None,
               ts_us: int | None = None) -> ReadingLocation:
        _check_device(device_id)
        if (seq is None) == (ts_us is None):
            raise ValueError("give exactly one of seq and ts_us")
        if seq is not None:
            loc = self.ledger.locate(device_id, _check_nonneg("seq", seq))
            if loc is None:
                raise ProofUnavailable(f"no sealed reading {device_id}/{seq} in the ledger")
            return loc
        found = self.ledger.locate_by_time(device_id, _check_nonneg("ts_us", ts_us or 0))
        if not found:
            raise ProofUnavailable(f"no sealed reading of {device_id} at ts_us {ts_us}")
        if len(found) > 1:
            raise ProofUnavailable(f"{len(found)} readings of {device_id} at ts_us {ts_us} "
                                   f"(seq {[f.seq for f in found]}): ask by seq")
        return found[0]

    # --- bundles ----------------------------------------------------------------------------
    def proof(self, device_id: str, seq: int | None = None,
              ts_us: int | None = None) -> ProofResult:
        loc = self.locate(device_id, seq, ts_us)
        window = self.ledger.window_by_index(loc.log_index)
        if window is None:
            raise ProofUnavailable(f"window {loc.log_index} of {device_id}/{loc.seq} is missing")
        stored, leaf = self._stored_reading(loc)
        reading = stored.canonical
        if leaf != window.leaf_hashes[loc.index_in_window]:
            raise ProofAltered(
                f"reading {loc.device_id}/{loc.seq} in InfluxDB does not hash to its sealed leaf "
                f"(window {loc.window_id}, index {loc.index_in_window}): altered after sealing")
        size = self.mirror.sync()
        cp_size, cp = self._checkpoint_for(loc.log_index, size)
        anchor = cp.anchor() if cp is not None else None
        try:
            bundle = build_bundle(reading, loc.index_in_window, window.leaf_hashes, window.header,
                                  loc.log_index, self.log, cp_size, anchor)
        except ValueError as exc:
            raise ProofAltered(f"the ledger's records for {device_id}/{loc.seq} do not fit "
                                   f"together (altered?): {exc}") from exc
        if stored.sig_at is not None:  # signed by its device: bundle /2
            signed = self._signed_message(loc.device_id, stored.sig_at)
            key_proof = self._key_proof(loc.device_id, signed["key_id"], cp_size)
            try:
                bundle = build_bundle(reading, loc.index_in_window, window.leaf_hashes,
                                      window.header, loc.log_index, self.log, cp_size, anchor,
                                      signed, key_proof)
            except ValueError as exc:
                raise ProofAltered(f"the device signature of {device_id}/{loc.seq} does not "
                                   f"check out (altered?): {exc}") from exc
        status = ("anchored" if anchor else
                  "pending-confirmation" if cp is not None and cp.status == "mined" else "pending")
        return ProofResult(bundle, status, cp, self.settings.anchor_confirmations)

    def _signed_message(self, device_id: str, sig_at: int) -> dict[str, Any]:
        """The signed message a stored reading names (``sig_at``): key id, signature, readings."""
        q = (f"SELECT * FROM {quote_ident(SIGNED_MEASUREMENT)} "
             f"WHERE \"device_id\" = $device AND time = {int(sig_at)}")
        rows = self._loop.run_until_complete(self._influx.query(q, {"device": device_id}))
        if not rows:
            raise ProofAltered(f"the signed message of {device_id} at {sig_at} is missing from "
                               "InfluxDB: the reading's device signature cannot be shown")
        try:
            span = signed_span(rows[0])
            points = None
            if span is not None:  # D45: rebuilt from the message's own readings points
                q = (f"SELECT * FROM {quote_ident(READINGS_MEASUREMENT)} WHERE \"device_id\" = "
                     f"$device AND time >= {span.first_ns} AND time <= {span.last_ns}")
                points = self._loop.run_until_complete(self._influx.query(
                    q, {"device": device_id}))
            signed, stored = signed_message_readings(rows[0], points)
        except StoredReadingError as exc:
            raise ProofAltered(f"the signed message of {device_id} is malformed: {exc}") from exc
        windows: dict[int, Any] = {}  # a message's readings share a window: loaded once
        for other, leaf in stored:
            # Each rebuilt reading is the device's word only if it is the sealed one: an altered
            # neighbour is named here, not left to fail the bundle's device-signature step.
            self._check_sealed(other, leaf, windows)
        return signed

    def _check_sealed(self, stored: StoredReading, leaf: bytes, windows: dict[int, Any]) -> None:
        """Raise ProofAltered unless ``leaf`` (what ``stored`` hashes to) is the one the ledger
        sealed for it."""
        c = stored.canonical
        loc = self.ledger.locate(c["device_id"], c["seq"])
        window = None
        if loc is not None:
            if loc.log_index not in windows:
                windows[loc.log_index] = self.ledger.window_by_index(loc.log_index)
            window = windows[loc.log_index]
        if loc is None or window is None:
            raise ProofAltered(f"reading {c['device_id']}/{c['seq']} of the signed message is not "
                               "sealed in the ledger: the device signature cannot be shown")
        if leaf != window.leaf_hashes[loc.index_in_window]:
            raise ProofAltered(f"reading {c['device_id']}/{c['seq']} of the signed message in "
                               "InfluxDB does not hash to its sealed leaf: altered after "
                               "sealing, so the device signature cannot be shown")

    def _key_proof(self, device_id: str, key_id: str, cp_size: int) -> dict[str, Any]:
        """The registration of ``key_id`` for ``device_id`` with its path to checkpoint ``cp_size``."""
        for row in key_rows(self.settings):
            entry = row["entry"]
            if (entry["device_id"], entry["key_id"], entry["action"]) == (device_id, key_id,
                                                                          "register"):
                break
        else:
            raise ProofUnavailable(f"key {key_id} of {device_id} is not in the device-key file")
        window = (self.ledger.window_by_id(row["window_id"]) if row.get("window_id") else None)
        if window is None or window.topic != KEY_TOPIC:
            raise ProofUnavailable(f"key {key_id} of {device_id} is not sealed in this ledger's "
                                   "window log")
        index = entry["seq"] - int(window.header["first_offset"])
        if not 0 <= index < len(window.leaf_hashes) or \
                key_entry_leaf(entry) != window.leaf_hashes[index]:
            raise ProofAltered(f"key entry {entry['seq']} no longer hashes to its sealed leaf")
        if window.log_index >= cp_size:
            raise ProofUnavailable(f"key {key_id} is not yet in checkpoint size {cp_size}")
        return build_key_proof(entry, index, window.leaf_hashes, window.header, window.log_index,
                               cp_size, self.log.inclusion_proof(window.log_index, cp_size))

    # --- consistency ------------------------------------------------------------------------
    def consistency(self, old_size: int, new_size: int) -> dict[str, Any]:
        """Proof that anchored checkpoint ``old_size`` is a prefix of anchored ``new_size``."""
        _check_nonneg("size1", old_size)
        _check_nonneg("size2", new_size)
        if not 0 < old_size <= new_size:
            raise ValueError("need 0 < SIZE1 <= SIZE2")
        if self.contract is None:
            raise ProofUnavailable("no anchor contract configured")
        log_size = self.mirror.sync()
        ends = []
        for size in (old_size, new_size):
            cp = self.store.checkpoint(self.contract, size)
            if cp is None or cp.status != "anchored":
                anchored = [c.size for c in self.store.checkpoints(self.contract, "anchored")]
                raise ProofUnavailable(f"{size} is not an anchored checkpoint (anchored sizes: "
                                       f"{anchored[-20:]})")
            if size > log_size or self.log.root(size).hex() != cp.root:
                raise ProofAltered(f"the ledger's root at size {size} differs from the "
                                       "anchored root: the window log was altered")
            ends.append(cp)
        old, new = ends
        return build_consistency_document(self.log, old_size, new_size, old.anchor(), new.anchor())


def build_proof(settings: Settings, device_id: str, seq: int | None = None,
                ts_us: int | None = None) -> dict[str, Any]:
    """One-shot: the ``vitalchain-proof/1`` bundle of reading ``(device_id, seq)`` (or at ts_us).

    Raises :class:`ProofUnavailable` (unknown or altered reading) or ``ValueError`` (bad input).
    """
    with ProofService(settings) as service:
        return service.proof(device_id, seq, ts_us).bundle


def build_consistency(settings: Settings, old_size: int, new_size: int) -> dict[str, Any]:
    with ProofService(settings) as service:
        return service.consistency(old_size, new_size)


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
