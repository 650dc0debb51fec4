"""FHIR R4 search of vital-signs Observations: parameters, keyset paging, Bundles, errors.

What a client may send (docs/API.md, "FHIR", has the full rules):

- ``patient`` / ``subject`` (``id``, ``Patient/id``, ``<base>/Patient/id``; modifier ``:Patient``),
  ``code`` (``[system|]code``, LOINC), ``category`` (``vital-signs``), ``date`` (every prefix but
  ``ap``, every precision; see :mod:`vitalchain.api.fhirdates`); comma = OR, repeated = AND;
- ``_count`` (resources per page), ``_sort`` (``date``/``-date``), ``_total``
  (``none``/``estimate``/``accurate``), ``_format`` (JSON only) and ``_cursor`` (ours: in the
  ``next``/``previous`` links).

Anything else is ignored and reported in an ``OperationOutcome`` entry (FHIR's lenient default),
or refused with ``Prefer: handling=strict``.  An unsupported modifier or value is always refused.

Paging is keyset, not offset: a position is ``(InfluxDB time in ns, device id, kind index)``,
unique per Observation because InfluxDB identifies a point by its tags and timestamp.  Readings
arriving later land after (or before) the position and never shift a page already linked.

The readings come from a :class:`ReadingSource` the route hands in (today
``vitalchain.api.vitals.PatientReadings``), and Observations from a ``build(reading, code)``
callable: this module never queries a store itself and never decides how a reading looks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

from vitalchain.api import fhir
from vitalchain.api.fhirdates import UNIVERSE, DateValueError, Spans, intersection, prefixed, union
from vitalchain.core.ids import ID_REGEX
from vitalchain.errors import VitalchainError

Key = tuple[int, str]  # (InfluxDB time in ns, device id): one reading of one patient
MAX_COUNT = 1000
DEFAULT_COUNT = 100
MAX_VALUES = 20  # comma-separated values in one parameter, and repeats of one parameter
FHIR_JSON = "application/fhir+json"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
JSON_FORMATS = ("json", "application/json", "application/fhir+json")
SEARCH_PARAMS = ("patient", "subject", "code", "category", "date")
RESULT_PARAMS = ("_count", "_sort", "_total", "_format", "_cursor")
_ID = re.compile(ID_REGEX)
_CURSOR = re.compile(r"(after|before):(\d{1,19}):([A-Za-z0-9][A-Za-z0-9_.-]{0,63}):(-1|[0-5])")


class SearchError(VitalchainError):
    """A request the FHIR API refuses: HTTP status, FHIR issue code, and the reason (FHIR's own
    statuses, so it carries one instead of taking its kind's)."""

    def __init__(self, status: int, code: str, diagnostics: str, location: str | None = None):
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics, self.location = status, code, diagnostics, location


def outcome(diagnostics: str, code: str = "invalid", severity: str = "error",
            location: str | None = None) -> dict[str, Any]:
    """An ``OperationOutcome`` with one issue (the body of every FHIR error answer)."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if location:
        issue["expression"] = [location]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


ISSUE_BY_STATUS = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
                   405: "not-supported", 406: "not-supported", 413: "too-costly",
                   422: "invalid", 503: "transient"}


def issue_code(status: int) -> str:
    return ISSUE_BY_STATUS.get(status, "exception")


# --- parameters --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cursor:
    """A position in the result order: page ``after`` it (next) or ``before`` it (previous)."""

    direction: str
    key: Key
    kind: int

    def encode(self) -> str:
        return f"{self.direction}:{self.key[0]}:{self.key[1]}:{self.kind}"


@dataclass
class ObservationSearch:
    """A parsed search: who, what, when, how many, which order, where to start."""

    patients: tuple[str, ...]        # every patient the request names (consent is checked on all)
    patient: str | None              # the one patient matched; None: the conditions exclude all
    kinds: tuple[str, ...]           # Observation codes per reading, in the order served
    spans: Spans                     # instants matched, disjoint, in time order
    count: int
    descending: bool
    total: str
    cursor: Cursor | None
    applied: list[tuple[str, str]]   # parameters used, as the self link repeats them
    ignored: list[str] = field(default_factory=list)
    several: bool = False            # several patients remain: refused, after the consent check

    def check_one_patient(self) -> None:
        """Refuse a search that leaves several patients (called once consent was checked, so a
        clinician naming an ungranted patient learns that first, whatever else is wrong)."""
        if self.several:
            raise SearchError(400, "not-supported", "the search names several patients: search "
                              "one patient at a time", "patient")


def _values(raw: str, name: str) -> list[str]:
    values = raw.split(",")
    if len(values) > MAX_VALUES or any(not v for v in values):
        raise SearchError(400, "invalid", f"{name}: give 1 to {MAX_VALUES} non-empty "
                          "comma-separated values", name)
    return values


def _patient_ref(value: str, name: str, base: str) -> str:
    ref = value
    for prefix in (f"{base}/Patient/", "Patient/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            break
    if not _ID.fullmatch(ref):
        raise SearchError(400, "invalid", f"{name}={value!r} is not a patient id or Patient/<id> "
                          f"reference (ids match {ID_REGEX})", name)
    return ref


def _code(value: str) -> str:
    system, bar, code = value.rpartition("|")
    if (bar and system != fhir.LOINC) or code not in fhir.SEARCH_CODES:
        raise SearchError(400, "code-invalid", f"code {value!r} is not a supported LOINC vital "
                          f"sign ({', '.join(fhir.SEARCH_CODES)}, optionally as "
                          f"{fhir.LOINC}|<code>)", "code")
    return code


def _category(value: str) -> bool:
    system, bar, code = value.rpartition("|")
    return code == "vital-signs" and (not bar or system == CATEGORY_SYSTEM)


def _single(params: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in params if k == name]
    if len(values) > 1:
        raise SearchError(400, "invalid", f"{name} may be given once", name)
    return values[0] if values else None


def parse_search(params: Sequence[tuple[str, str]], base: str, strict: bool) -> ObservationSearch:
    """Parse the query string of ``GET /fhir/Observation`` (no I/O; errors raise SearchError).

    ``base`` is the server's FHIR base URL (absolute ``Patient`` references must name it);
    ``strict`` is ``Prefer: handling=strict`` (unknown parameters refused, not ignored)."""
    named: list[str] = []
    patient_sets: list[set[str]] = []
    kinds: set[str] | None = None
    category_ok = True
    spans: Spans = UNIVERSE
    applied: list[tuple[str, str]] = []
    ignored: list[str] = []
    seen: dict[str, int] = {}
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name not in SEARCH_PARAMS and name not in RESULT_PARAMS:
            if strict:
                raise SearchError(400, "not-supported", f"unknown search parameter {raw_name!r} "
                                  "(Prefer: handling=strict)", raw_name)
            ignored.append(raw_name)
            continue
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > MAX_VALUES:
            raise SearchError(400, "too-costly", f"{name} repeated more than {MAX_VALUES} times", name)
        if modifier and not (name in ("patient", "subject") and modifier == "Patient"):
            raise SearchError(400, "not-supported", f"modifier :{modifier} of {name} is not "
                              "supported (only patient:Patient and subject:Patient)", raw_name)
        if name in RESULT_PARAMS:
            continue
        applied.append((raw_name, value))
        values = _values(value, name)
        if name in ("patient", "subject"):
            refs = {_patient_ref(v, name, base) for v in values}
            named.extend(sorted(refs))
            patient_sets.append(refs)
        elif name == "code":
            chosen = {fhir.panel_code(_code(v)) for v in values}
            kinds = chosen if kinds is None else kinds & chosen
        elif name == "category":
            category_ok = category_ok and any(_category(v) for v in values)
        else:
            try:
                spans = intersection(spans, union([prefixed(v) for v in values]))
            except DateValueError as exc:
                raise SearchError(400, "invalid", f"date: {exc}", "date") from None
    if not patient_sets:
        raise SearchError(400, "required", "name the patient: patient=<id> or subject=Patient/<id> "
                          "(Observations are searched one patient at a time)", "patient")
    matched = set.intersection(*patient_sets)
    patient = min(matched) if matched and category_ok else None
    count_text = _single(params, "_count")
    try:
        count = DEFAULT_COUNT if count_text is None else int(count_text)
        if count < 0:
            raise ValueError
    except ValueError:
        raise SearchError(400, "invalid", f"_count={count_text!r} is not a whole number >= 0",
                          "_count") from None
    count = min(count, MAX_COUNT)
    sort = _single(params, "_sort") or "date"
    if sort not in ("date", "-date"):
        raise SearchError(400, "not-supported", f"_sort={sort!r}: only date and -date are "
                          "supported", "_sort")
    total = _single(params, "_total") or "none"
    if total not in ("none", "estimate", "accurate"):
        raise SearchError(400, "invalid", f"_total={total!r}: give none, estimate or accurate",
                          "_total")
    fmt = _single(params, "_format")
    if fmt is not None and fmt not in JSON_FORMATS:
        raise SearchError(406, "not-supported", f"_format={fmt!r}: this server answers JSON "
                          f"only ({', '.join(JSON_FORMATS)})", "_format")
    cursor_text = _single(params, "_cursor")
    cursor = None
    if cursor_text is not None:
        m = _CURSOR.fullmatch(cursor_text)
        if m is None or int(m.group(2)) >= 2**63:
            raise SearchError(400, "invalid", "_cursor is not one this server wrote: use the "
                              "next/previous links as given", "_cursor")
        cursor = Cursor(m.group(1), (int(m.group(2)), m.group(3)), int(m.group(4)))
    applied += [("_count", str(count)), ("_sort", sort)]
    if total != "none":
        applied.append(("_total", total))
    if fmt is not None:
        applied.append(("_format", fmt))
    chosen_kinds = tuple(k for k in fhir.KINDS if kinds is None or k in kinds)
    return ObservationSearch(tuple(dict.fromkeys(named)), patient, chosen_kinds, spans, count,
                             sort == "-date", total, cursor, applied, ignored, len(matched) > 1)


# --- paging ------------------------------------------------------------------------------------
class ReadingSource(Protocol):
    """Where one patient's readings come from: the ONE call that decides what is served."""

    async def page(self, lo_us: int, hi_us: int, start: Key | None, inclusive: bool,
                   descending: bool, limit: int) -> list[tuple[Key, Any | None]]:
        """Readings with time in ``[lo_us, hi_us)``, ordered by key (reversed if
        ``descending``), from ``start`` on (strictly after it unless ``inclusive``); at least
        ``limit`` of them when there are that many (more is fine).  ``None`` for a stored
        point that cannot be read back as a reading."""
        ...

    async def count(self, lo_us: int, hi_us: int) -> int:
        """How many readings have time in ``[lo_us, hi_us)``."""
        ...


@dataclass(frozen=True)
class Item:
    key: Key
    kind: int
    reading: Any


@dataclass
class Page:
    items: list[Item]
    more: bool          # items exist beyond the page, in the direction it was read
    unreadable: int     # stored points skipped because they could not be read back


def _span_order(spans: Spans, start: Key | None, descending: bool) -> Iterable[tuple[int, int]]:
    ordered = reversed(spans) if descending else spans
    for lo, hi in ordered:
        if start is not None:
            t_us = start[0] // 1000
            if (not descending and hi <= t_us) or (descending and lo > t_us):
                continue  # wholly before the start position in this direction
        yield lo, hi


async def walk(source: ReadingSource, search: ObservationSearch) -> Page:
    """The page the search asks for: ``count`` Observations after (or before) the cursor."""
    if search.count == 0 or not search.kinds:  # only a total asked, or codes that exclude all
        return empty_page()
    backward = search.cursor is not None and search.cursor.direction == "before"
    descending = search.descending != backward  # the order readings are fetched in
    kinds = len(search.kinds)
    want = search.count + 1  # one more tells whether there is a next page
    items: list[Item] = []
    unreadable = 0
    start: Key | None = search.cursor.key if search.cursor else None
    inclusive = start is not None
    per_fetch = max(2, math.ceil(want / kinds) + 1)
    for lo, hi in _span_order(search.spans, start, descending):
        span_start, span_inclusive = start, inclusive
        while len(items) < want:
            rows = await source.page(lo, hi, span_start, span_inclusive, descending, per_fetch)
            for key, reading in rows:
                if reading is None:
                    unreadable += 1
                    continue
                order = range(kinds - 1, -1, -1) if backward else range(kinds)
                for k in order:
                    if search.cursor is not None and key == search.cursor.key and \
                            (k >= search.cursor.kind if backward else k <= search.cursor.kind):
                        continue
                    items.append(Item(key, k, reading))
            if len(rows) < per_fetch:
                break
            span_start, span_inclusive = rows[-1][0], False
        if len(items) >= want:
            break
    more = len(items) > search.count
    items = items[:search.count]
    if backward:
        items.reverse()
    return Page(items, more, unreadable)


async def total(source: ReadingSource, search: ObservationSearch) -> int:
    """Observations the whole search matches: readings in its spans times kinds per reading."""
    if not search.kinds:
        return 0
    readings = 0
    for lo, hi in search.spans:
        readings += await source.count(lo, hi)
    return readings * len(search.kinds)


# --- the Bundle --------------------------------------------------------------------------------
def _link(relation: str, base: str, search: ObservationSearch, cursor: Cursor | None) -> dict[str, str]:
    query = list(search.applied) + ([("_cursor", cursor.encode())] if cursor else [])
    return {"relation": relation, "url": f"{base}/Observation?{urlencode(query)}"}


def links(base: str, search: ObservationSearch, page: Page) -> list[dict[str, str]]:
    """``self`` (this page), ``next`` and ``previous`` (keyset cursors) where they lead somewhere.

    A page read forward (the first one, or after a ``next``) has a ``next`` link when items
    remain and a ``previous`` link when it was reached by a cursor; a page read backward (after
    a ``previous``) the other way round.  ``_count=0`` asks for the total only: no paging."""
    out = [_link("self", base, search, search.cursor)]
    cur, items = search.cursor, page.items
    if search.count == 0:
        return out
    backward = cur is not None and cur.direction == "before"
    next_cursor = prev_cursor = None
    if items:
        if backward or page.more:
            next_cursor = Cursor("after", items[-1].key, items[-1].kind)
        if (backward and page.more) or (not backward and cur is not None):
            prev_cursor = Cursor("before", items[0].key, items[0].kind)
    elif cur is not None:  # an empty page still links back to where it came from
        # kind -1 is "before every Observation of that reading", 5 "after all of them"
        if backward:
            next_cursor = Cursor("after", cur.key, max(-1, cur.kind - 1))
        else:
            prev_cursor = Cursor("before", cur.key, min(len(fhir.KINDS), cur.kind + 1))
    if next_cursor:
        out.append(_link("next", base, search, next_cursor))
    if prev_cursor:
        out.append(_link("previous", base, search, prev_cursor))
    return out


def searchset(base: str, search: ObservationSearch, page: Page,
              build: Callable[[Any, str, Key], dict[str, Any]], count_total: int | None) -> dict[str, Any]:
    """The searchset Bundle of one page (``base`` is the FHIR base URL, ``.../fhir``);
    ``build(reading, code, key)`` makes one Observation (the key names the stored point)."""
    entries: list[dict[str, Any]] = []
    for item in page.items:
        resource = build(item.reading, search.kinds[item.kind], item.key)
        entries.append({"fullUrl": f"{base}/Observation/{resource['id']}", "resource": resource,
                        "search": {"mode": "match"}})
    notes = []
    if search.ignored:
        notes.append(f"ignored unsupported parameters: {', '.join(sorted(set(search.ignored)))} "
                     "(send Prefer: handling=strict to have them refused)")
    if page.unreadable:
        notes.append(f"{page.unreadable} stored readings in this page's range could not be read "
                     "back and are not shown (the tamper audit names them)")
    if notes:
        entries.append({"resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "warning", "code": "informational", "diagnostics": n} for n in notes]},
            "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if count_total is not None:
        bundle["total"] = count_total
    bundle["link"] = links(base, search, page)
    bundle["entry"] = entries
    return bundle


def wants_total(search: ObservationSearch) -> bool:
    """``_total=estimate|accurate``, or ``_count=0`` (a request for nothing but the count)."""
    return search.total != "none" or search.count == 0


def free_total(search: ObservationSearch, page: Page) -> int | None:
    """The total when it costs nothing: a first page with nothing after it holds every match."""
    if search.cursor is None and not page.more and search.count > 0:
        return len(page.items)
    return None


def empty_page() -> Page:
    return Page([], False, 0)


# --- read by id --------------------------------------------------------------------------------
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def check_read_id(resource_id: str) -> fhir.ObservationRef | None:
    """Parse ``GET /fhir/Observation/{id}``: 400 if not a FHIR id, None if not one of ours."""
    if not _FHIR_ID.fullmatch(resource_id):
        raise SearchError(400, "invalid", f"{resource_id!r} is not a FHIR id "
                          "([A-Za-z0-9-.]{1,64})", "id")
    return fhir.parse_observation_id(resource_id)


# --- capabilities ------------------------------------------------------------------------------
def capability_statement(base: str, software_version: str) -> dict[str, Any]:
    """``GET /fhir/metadata``: exactly what this server does (read + search of Observation)."""
    def param(name: str, kind: str, doc: str) -> dict[str, str]:
        return {"name": name, "type": kind, "documentation": doc}

    codes = ", ".join(fhir.SEARCH_CODES)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-30",
        "publisher": "vitalchain",
        "kind": "instance",
        "software": {"name": "vitalchain", "version": software_version},
        "implementation": {"description": "vitalchain: provable vital signs (FHIR R4, read-only)",
                           "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "documentation": "Read-only. Clinicians see only patients who granted them access; "
                             "every request is recorded in a tamper-evident access log.",
            "security": {"cors": False, "description": "Authorization: Bearer <token> "
                         "(vitalchain users add); role clinician; consent per patient"},
            "resource": [{
                "type": "Observation",
                "profile": "http://hl7.org/fhir/StructureDefinition/vitalsigns",
                "documentation": "One Observation per vital sign of a reading; blood pressure "
                                 "as panel 85354-9; ids are stable.",
                "interaction": [{"code": "read"}, {"code": "search-type",
                                 "documentation": "Paged with keyset next/previous links"}],
                "versioning": "no-version",
                "readHistory": False,
                "updateCreate": False,
                "conditionalCreate": False,
                "conditionalRead": "not-supported",
                "conditionalUpdate": False,
                "conditionalDelete": "not-supported",
                "searchParam": [
                    param("patient", "reference", "Required (or subject): id, Patient/id or "
                          "<base>/Patient/id; modifier :Patient; one patient per search"),
                    param("subject", "reference", "As patient"),
                    param("code", "token", f"LOINC {codes}, with or without system "
                          f"{fhir.LOINC}"),
                    param("category", "token", "vital-signs (every Observation here)"),
                    param("date", "date", "effectiveDateTime; prefixes eq (default) ne gt lt ge "
                          "le sa eb; precision year to fraction of a second; no offset = UTC"),
                    param("_count", "number", f"Observations per page, 0..{MAX_COUNT} "
                          f"(default {DEFAULT_COUNT}; larger is capped)"),
                    param("_sort", "special", "date (default) or -date"),
                    param("_total", "special", "none (default), estimate, accurate"),
                ],
            }],
        }],
    }


# --- OpenAPI (the route reads the query string itself, so it documents it here) ---------------
_OBJECT = {"type": "object"}
OPENAPI_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "a FHIR resource (Bundle, Observation, CapabilityStatement)",
          "content": {FHIR_JSON: {"schema": _OBJECT}}},
    **{code: {"description": f"OperationOutcome ({why})", "content": {FHIR_JSON: {"schema": _OBJECT}}}
       for code, why in ((400, "bad search"), (401, "no or bad token"), (403, "role or consent"),
                         (404, "unknown id or not granted"), (406, "non-JSON _format"),
                         (503, "InfluxDB unavailable"))},
}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


_STRINGS = {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": MAX_VALUES}
OPENAPI_SEARCH: dict[str, Any] = {"parameters": [
    _query("patient", "patient id, Patient/<id> or <base>/Patient/<id> (this or subject)",
           {"type": "string", "maxLength": 300}),
    _query("subject", "as patient", _STRINGS),
    _query("code", f"LOINC code, [{fhir.LOINC}|]code; comma = OR", _STRINGS),
    _query("category", "vital-signs", _STRINGS),
    _query("date", "[prefix]date; prefixes eq ne gt lt ge le sa eb; repeat = AND", _STRINGS),
    _query("_count", f"Observations per page (0..{MAX_COUNT}, larger is capped)",
           {"type": "integer", "minimum": 0}),
    _query("_sort", "date or -date", {"type": "string", "enum": ["date", "-date"]}),
    _query("_total", "none, estimate or accurate",
           {"type": "string", "enum": ["none", "estimate", "accurate"]}),
    _query("_cursor", "opaque: copy the next/previous links", {"type": "string"}),
]}
