"""The one strict JSON reader for every document the verifier accepts.

Two JSON parsers may disagree on duplicate keys (first wins, last wins) and on NaN/Infinity, so a
document that is ambiguous could verify in one language and mean something else in another: refuse
both rather than guess. The CLI, the API and tests read proofs only through :func:`load_json`.
"""

from __future__ import annotations

import json
from typing import Any

from vitalchain.errors import InvalidInput


class JsonInputError(InvalidInput):
    """The text is not strict JSON (syntax, NaN/Infinity, a duplicate key, not UTF-8)."""


def _reject_constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonInputError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_json(text: str | bytes) -> Any:
    """Parse strict JSON or raise :class:`JsonInputError` saying why."""
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except JsonInputError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise JsonInputError(f"not valid JSON: {exc}") from None
