"""Secrets out of every log: bearer tokens and token-like query parameters are redacted.

The API reads tokens only from the ``Authorization`` header; one sent in the URL is ignored (so
such a request is 401 unless it also has the header).  But a client that puts its token in the
URL has already sent it: uvicorn's access log would print the request line in full, and the access log
(``api/accesslog.py``) would store the query.  Both go through :func:`redact_query` /
:func:`redact_text` first, so no token reaches a log file, the access-log table or the ledger.

Two independent rules, either one redacts: a query parameter whose *name* looks like a credential
(``token``, ``access_token``, ``api_key``, ``password``, ...), and any text with the *shape* of a
vitalchain token (``vct_<12 hex>_<secret>``), wherever it appears (value of any parameter, path).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

from vitalchain.storage.apistore import TOKEN_PREFIX

REDACTED = "[REDACTED]"
# The shape ApiStore.add_user gives tokens; also matched percent-encoded (``_`` as %5F).
TOKEN_SHAPE = re.compile(rf"{TOKEN_PREFIX}(?:_|%5[fF])[0-9a-f]{{12}}(?:_|%5[fF])[A-Za-z0-9_%\-]+")
SECRET_NAME = re.compile(r"token|key|secret|passw|pwd|auth|session|jwt|signature|credential|bearer",
                         re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with anything shaped like a vitalchain token replaced."""
    return TOKEN_SHAPE.sub(REDACTED, text)


def redact_query(query: str) -> str:
    """A raw query string with credential-named parameters' values and token-shaped text redacted."""
    if not query:
        return query
    parts = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        if eq and value and (SECRET_NAME.search(unquote_plus(name))
                             or TOKEN_SHAPE.search(unquote_plus(value))):
            value = REDACTED
        parts.append(redact_text(f"{name}{eq}{value}"))
    return "&".join(parts)


def redact_target(target: str) -> str:
    """A request target (``/path?query``) as a log may show it."""
    path, mark, query = target.partition("?")
    return redact_text(path) + (mark + redact_query(query) if mark else "")


class RedactSecrets(logging.Filter):
    """Logging filter: redacts request targets and token-shaped text in a record before it is
    formatted.  Installed on uvicorn's handlers by ``vitalchain api`` (see :func:`log_config`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_target(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact_target(v) if isinstance(v, str) else v
                           for k, v in record.args.items()}
        return True


def log_config() -> dict:
    """uvicorn's default logging configuration with :class:`RedactSecrets` on every handler."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_secrets"] = {"()": f"{__name__}.RedactSecrets"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_secrets")
    return config
