"""Async access to InfluxDB through its v1 HTTP API.

Debian ships InfluxDB 1.6.7, which serves only ``/write`` (line protocol) and ``/query`` (InfluxQL);
InfluxDB 2.x and 3.x serve the same two endpoints for compatibility, so this one small client runs
against all of them (see docs/DECISIONS.md). Writes are batched, retried with backoff on
connection errors and 5xx answers, and fail with :class:`InfluxUnavailable` naming the server once
the retries are spent, so a caller can keep its data and try again rather than lose it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from vitalchain.config import Settings
from vitalchain.errors import Unavailable, VitalchainError

FieldValue = float | int | bool | str


class InfluxError(VitalchainError):
    """InfluxDB answered, but refused the request (bad line protocol, bad query, ...)."""


class InfluxUnavailable(InfluxError, Unavailable):
    """InfluxDB could not be reached (or kept failing) within the retry budget."""


# --- line protocol ----------------------------------------------------------------------
def _escape(text: str, specials: str) -> str:
    if "\n" in text or "\r" in text:
        raise ValueError(f"line protocol names and tags cannot hold newlines: {text!r}")
    for char in "\\" + specials:
        text = text.replace(char, "\\" + char)
    return text


# Any character that _escape would change or refuse: most names and tags hold none, and one
# search is cheaper than _escape's five scans (the stream formats ~10 keys and tags per reading).
_MEASUREMENT_SPECIAL = re.compile(r"[\\, \n\r]")
_KEY_SPECIAL = re.compile(r"[\\,= \n\r]")


def escape_measurement(name: str) -> str:
    return _escape(name, ", ") if _MEASUREMENT_SPECIAL.search(name) else name


def escape_key(key: str) -> str:
    return _escape(key, ",= ") if _KEY_SPECIAL.search(key) else key


def format_field(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"InfluxDB cannot store {value!r}")
        return repr(value)  # repr round-trips every double exactly
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    raise TypeError(f"unsupported field type {type(value).__name__}")


@dataclass(frozen=True)
class Point:
    """One line of line protocol; ``time_ns`` is always in nanoseconds (precision ``n``)."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ns: int | None = None

    def to_line(self) -> str:
        if not self.fields:
            raise ValueError(f"point in {self.measurement!r} has no fields")
        head = escape_measurement(self.measurement)
        for key in sorted(self.tags):
            value = self.tags[key]
            if value == "":
                continue  # InfluxDB rejects empty tag values; absent is the same thing
            head += f",{escape_key(key)}={escape_key(value)}"
        body = ",".join(f"{escape_key(k)}={format_field(v)}" for k, v in self.fields.items())
        tail = f" {self.time_ns}" if self.time_ns is not None else ""
        return f"{head} {body}{tail}"


# --- InfluxQL -----------------------------------------------------------------------------
def quote_ident(name: str) -> str:
    """A double-quoted InfluxQL identifier (measurement, tag or field name)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """A single-quoted InfluxQL string literal: nothing a user types escapes it."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --- client -------------------------------------------------------------------------------
@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once per process and shared by every client.

    httpx builds a fresh context (parsing the whole CA bundle) for every ``AsyncClient``, even for
    ``http://`` URLs (encode/httpx#3627, #2298); the API makes a client per request, and that was
    a third of a GET /clinician/patients' CPU (docs/PERFORMANCE.md).  The same verification,
    built by the same function; only its CA bundle is read once, at the first client.
    """
    return httpx.create_ssl_context()


@dataclass
class InfluxClient:
    settings: Settings
    database: str | None = None
    retries: int = 5
    backoff_s: float = 0.2
    timeout_s: float = 10.0
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    @property
    def db(self) -> str:
        return self.database or self.settings.influx_db

    async def __aenter__(self) -> InfluxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {}
            if self.settings.influx_token_file:
                # InfluxDB 2/3 accept a token on their v1 compatibility endpoints.
                token = Path(self.settings.influx_token_file).read_text().strip()
                headers["Authorization"] = f"Token {token}"
            self._client = httpx.AsyncClient(base_url=self.settings.influx_url, timeout=self.timeout_s,
                                             headers=headers, verify=_tls_context())
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        delay = self.backoff_s
        last: str = ""
        for attempt in range(self.retries + 1):
            try:
                response = await self._http().request(method, path, **kwargs)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 500:
                    return response
                last = f"HTTP {response.status_code}: {response.text.strip()[:200]}"
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise InfluxUnavailable(
            f"InfluxDB at {self.settings.influx_url} unavailable after {self.retries + 1} "
            f"attempts ({last})")

    async def write(self, points: Iterable[Point | str], batch_size: int = 5000,
                    precision: str = "n") -> int:
        """Write points in batches; returns how many lines were written.

        Rewriting a point with the same measurement, tags and timestamp replaces it, which is what
        makes the pipeline's sinks idempotent under replay.
        """
        lines = [p.to_line() if isinstance(p, Point) else p for p in points]
        for start in range(0, len(lines), batch_size):
            body = "\n".join(lines[start:start + batch_size]).encode()
            response = await self._request("POST", "/write", content=body,
                                           params={"db": self.db, "precision": precision})
            if response.status_code != 204:
                raise InfluxError(f"InfluxDB refused a write to {self.db!r}: "
                                  f"HTTP {response.status_code} {response.text.strip()[:300]}")
        return len(lines)

    async def query(self, q: str, params: Mapping[str, Any] | None = None,
                    epoch: str = "ns") -> list[dict[str, Any]]:
        """Run InfluxQL and return rows as dicts (tags of GROUP BY series merged in).

        ``params`` binds ``$name`` placeholders server-side, the safe way to pass user input.
        """
        form: dict[str, str] = {"q": q, "db": self.db, "epoch": epoch}
        if params:
            form["params"] = json.dumps(dict(params))
        response = await self._request("POST", "/query", data=form)
        if response.status_code != 200:
            raise InfluxError(f"InfluxDB query failed: HTTP {response.status_code} "
                              f"{response.text.strip()[:300]}")
        return rows_of(response.json())

    async def create_database(self) -> None:
        await self.query(f"CREATE DATABASE {quote_ident(self.db)}")


def rows_of(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for result in payload.get("results", []):
        if "error" in result:
            raise InfluxError(f"InfluxDB query error: {result['error']}")
        for series in result.get("series", []) or []:
            columns: Sequence[str] = series["columns"]
            tags = series.get("tags") or {}
            for values in series.get("values", []):
                row = dict(zip(columns, values, strict=True))
                row.update(tags)
                rows.append(row)
    return rows


class BatchWriter:
    """Collects points and flushes them in batches, by count or on demand; nothing is dropped:
    a failed flush keeps the points for the next attempt."""

    def __init__(self, client: InfluxClient, max_points: int = 5000) -> None:
        self.client = client
        self.max_points = max_points
        self._pending: list[Point | str] = []

    def __len__(self) -> int:
        return len(self._pending)

    async def add(self, point: Point | str) -> None:
        self._pending.append(point)
        if len(self._pending) >= self.max_points:
            await self.flush()

    async def flush(self) -> int:
        if not self._pending:
            return 0
        batch = list(self._pending)
        written = await self.client.write(batch, batch_size=self.max_points)
        del self._pending[:len(batch)]
        return written
