"""ASGI middleware writing one access-log entry per API request, before its response.

Pure ASGI (not ``BaseHTTPMiddleware``) so it sees the status of every request, including
401/403/422 answered before any handler ran and 500s from handler crashes.  The entry is
written before the response starts, so no answer leaves the API unrecorded.  Path and query are
stored with tokens redacted (``api/redact.py``): a token a client put in the URL is a secret.  Public routes (health,
OpenAPI description, docs) are not recorded: they reveal nothing about patients.
"""

from __future__ import annotations

from typing import Any

import anyio

from vitalchain.api.auth import ACCESS_KEY
from vitalchain.api.redact import redact_query, redact_text

PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class AccessRecorder:
    def __init__(self, app: Any, access_log: Any) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        info: dict[str, Any] = {"user": None, "role": None, "allowed": False, "reason": "",
                                "patient_id": None}
        scope[ACCESS_KEY] = info
        recorded = False

        async def record(code: int) -> None:
            nonlocal recorded
            recorded = True
            reason = info["reason"] or f"HTTP {code}"
            await anyio.to_thread.run_sync(lambda: self.access_log.record(
                user=info["user"], role=info["role"], method=scope["method"],
                path=redact_text(scope["path"]),
                query=redact_query(scope.get("query_string", b"").decode("latin-1")),
                patient_id=info["patient_id"], allowed=bool(info["allowed"]), status=code,
                reason=reason))

        async def capture(message: dict[str, Any]) -> None:
            # Recorded before the response starts: nobody sees data whose access is not logged.
            if message["type"] == "http.response.start" and not recorded:
                await record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            if not recorded:  # the app failed before answering
                await record(500)
