"""The clinician/auditor HTTP API (``vitalchain api``): FastAPI app, users, grants, access log.

Routes and roles are described in ``docs/API.md``; the app is built by :func:`vitalchain.api.app.create_app`.
"""
