"""Anchoring the window log on Ethereum, and the proof service.

Modules: ``contract/VitalAnchor.sol`` + ``contract/VitalAnchor.json`` (committed artifact),
``compile`` (reproducible solc build; ``vitalchain anchor compile --check``), ``chain`` (node,
key, fees), ``feepolicy`` (the caps per gas and per hour), ``deploy``, ``worker`` (``vitalchain
anchor run``), ``proofs`` (``vitalchain proof ...``), ``synthetic`` (sealed windows for tests and
the benchmark).  The anchor tables in the ledger file are ``vitalchain.storage.anchors``.

Decisions:

- Contract: ``anchor(bytes32 root, uint64 size)`` by the owner only (``NotOwner``); the same
  root and size again is a no-op (no event); a new root must have ``size > latestSize``
  (``SizeNotGreater``): the log only grows, so a smaller or equal size can only be a bug or an
  attack; a known root with another size reverts (``RootAnchoredWithOtherSize``).  Ownership is
  transferable (key rotation).  ``checkpoints(root) -> (size, blockNumber)``.
- Cadence: a checkpoint is recorded when ``anchor_every_windows`` new windows exist or
  ``anchor_interval_seconds`` passed since the last one (and at least one new window); with no
  checkpoint yet, the first window is due at once.  One transaction in flight at a time, always
  for the latest recorded checkpoint.
- "Nothing skipped": every recorded checkpoint ends ``anchored`` or ``superseded`` by a larger
  anchored one (which covers the same windows); "nothing twice": the contract never emits a root
  twice, retries reuse the open nonce.  Details in :mod:`vitalchain.anchor.worker`.
- Proofs cite the largest *anchored* checkpoint that contains the window (confirmed after
  ``anchor_confirmations`` blocks); before that, ``"anchor": null`` (verifier: pending), and the
  proof status is ``pending-confirmation`` while the checkpoint is mined but unconfirmed.
- Reorgs: recent anchors are re-checked and anchored again when they vanish (docs/DECISIONS.md
  D10); fees above the caps make the worker wait and say so (D11).

API for other packages: ``vitalchain.anchor.worker.run_worker(settings, stop_event, on_progress=None)``,
``vitalchain.anchor.worker.status(settings)``, ``vitalchain.anchor.proofs.build_proof(settings, device_id, seq=None,
ts_us=None) -> dict``, ``vitalchain.anchor.proofs.ProofService`` (reuse for many proofs),
``vitalchain.anchor.proofs.build_consistency(settings, size1, size2)`` and
``vitalchain.core.verify.verify_consistency_document(doc, rpc=None)``.
"""
