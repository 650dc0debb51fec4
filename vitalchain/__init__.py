"""vitalchain: streaming vital signs in, provable readings out.

One import namespace in four layers whose arrows point one way (docs/ARCHITECTURE.md, "Layers"):
``vitalchain.core`` (formats, trees, verifiers; no I/O) -> ``vitalchain.storage`` (ledger, anchor
records, InfluxDB model) -> services (``vitalchain.devices``, ``.ingest``, ``.anchor``, ``.api``,
``.audit``) -> ``vitalchain.app`` (CLI, demo, local stack). ``vitalchain.errors`` belongs to the
core, ``vitalchain.config`` (settings from the environment and the state folder) to storage.
"""
