"""The tamper audit: recompute what InfluxDB holds and compare it with the ledger and the chain.

``run_audit`` in :mod:`vitalchain.audit.engine` is the entry point (the CLI and, later, the API call it).
"""
