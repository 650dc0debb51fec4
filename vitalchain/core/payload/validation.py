"""Validation of device payloads arriving on MQTT: pure functions, no I/O.

A device is untrusted input. Every message is checked strictly (exact field set, exact JSON types,
physical limits from ``vitalchain.core.payload.limits``) before anything reaches Kafka, because a reading that gets
in is sealed into a Merkle window for good: rejecting late is not possible.

The checks are hand-written rather than ``jsonschema`` because the bridge validates every message
and jsonschema costs tens of microseconds per object; ``tests/test_validation.py`` checks on
generated samples that this validator and ``reading.schema.json`` agree.

Batch policy (``{"readings": [...]}``): *structural* problems of the batch itself (not a list,
empty, more than :data:`MAX_BATCH` readings, readings naming different devices) reject the whole
message, since they mean a broken sender and no reading in it is trustworthy. Problems of
individual readings are per reading: the good readings are forwarded and each bad one is
dead-lettered on its own with its index in the detail. A device that sent one implausible value
does not lose its other 99 readings, and the MQTT message is still acked only once every record
from it (forwarded or dead-lettered) is in Kafka.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from vitalchain.core.integrity.devicekeys import KEY_ID
from vitalchain.core.payload.limits import ID_PATTERN, MAX_BATCH, MAX_JSON_INT, MIN_TS_US, VITAL_LIMITS
from vitalchain.core.payload.shards import split_topic

TOPIC_PREFIX = "vitals/"
# fullmatch, not match: Python's ``$`` also matches before a trailing newline.
_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))

# Reason codes of dead-letter records with stage "bridge" (the value's "reason" field).
REASONS: dict[str, str] = {
    "oversized": "payload larger than max_payload_bytes; not parsed",
    "bad_topic": "MQTT topic is not vitals/<shard>/<device id> (or vitals/<device id>)",
    "malformed_json": ("payload is not UTF-8 JSON, or has NaN/Infinity, duplicate keys "
                       "or absurd nesting"),
    "not_an_object": "top-level JSON value is not an object",
    "schema": "missing, unexpected or wrongly typed field; the detail names the field",
    "out_of_range": ("value outside physical limits (or dia >= sys); the detail names "
                     "field, value and limit"),
    "device_mismatch": "reading's device_id differs from the topic's device id",
    "future_timestamp": "ts_us more than max_future_seconds ahead of the bridge clock",
    "batch_empty": "batch with no readings",
    "batch_too_large": f"batch with more than {MAX_BATCH} readings",
    "batch_mixed_devices": "batch whose readings name more than one device",
    "rate_limited": ("valid readings over the device's flood limit (ingest.ratelimit); one record "
                     "per message, the detail lists the readings not forwarded"),
    "bad_signature": ("device signature missing (VITALCHAIN_DEVICE_SIGNATURES=required), "
                      "malformed, made with a key not registered to the device or revoked, "
                      "or not verifying over the message's readings; whole message refused"),
}

READING_FIELDS = frozenset({"device_id", "patient_id", "seq", "ts_us", "vitals"})
VITAL_FIELDS = tuple(VITAL_LIMITS)
_VITAL_SET = frozenset(VITAL_FIELDS)
# Integers must be JSON integers (80, not 80.0): stricter than JSON Schema's "integer", on purpose,
# so what is forwarded is exactly what a strict reader expects.
_NUMBER_VITALS = frozenset({"temp_c"})
_INT_RANGES = {"seq": (0, MAX_JSON_INT), "ts_us": (MIN_TS_US, MAX_JSON_INT)}
# A valid message nests 4 deep ({"readings": [{... "vitals": {}}]}). Deeper is refused before
# parsing: json's C parser bounds nesting only by the interpreter's recursion limit, which other
# code (test frameworks, libraries) may raise, and then absurd nesting would parse, slowly, or
# overflow the C stack.
MAX_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_BRACKETS_OR_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why (part of) a message is refused; ``index`` is the reading's position in a batch."""

    reason: str
    detail: str
    index: int | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reason code {self.reason!r}")


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """A message whose device signature verified: what a proof needs to check it again."""

    key_id: str
    sig: str
    readings: list[Any]  # every reading of the message as sent (parsed), valid or not


# (device_id, key_id, sig, readings as parsed) -> None if the signature verifies, else why not.
SignatureCheck = Callable[[str, str, Any, list[Any]], str | None]
SIGNED_KEYS = frozenset({"key_id", "sig", "readings"})


@dataclass(slots=True)
class Outcome:
    """The result of validating one MQTT message: what to forward, what to dead-letter."""

    device_id: str | None  # from the topic; None when the topic is malformed
    readings: list[dict[str, Any]] = field(default_factory=list)
    # Position of each of ``readings`` in its batch (0 for a single reading), for dead letters.
    reading_indexes: list[int] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    signed: SignedMessage | None = None  # set when a signature was checked and holds


class SignedReadings(list[Any]):
    """A signed message's readings as handed to the signature hook when every one of them passed
    :func:`check_reading`: the list itself, plus ``signed_bytes``, the exact bytes the device
    signed (``devicekeys.signed_bytes``), already written from the checked readings so the hook
    need not check and rebuild them again (``check_signature(..., data)``). A hook that does not
    look at it rebuilds the same bytes."""

    __slots__ = ("signed_bytes",)

    def __init__(self, readings: list[Any], signed_bytes: bytes) -> None:
        super().__init__(readings)
        self.signed_bytes = signed_bytes


_HR, _SPO2, _RR, _TEMP, _SYS, _DIA = (VITAL_LIMITS[k] for k in
                                      ("hr", "spo2", "rr", "temp_c", "sys", "dia"))
_SEQ_RANGE, _TS_RANGE = _INT_RANGES["seq"], _INT_RANGES["ts_us"]


def plain_vitals(vitals: Any) -> bool:
    """Whether ``vitals`` pass what :func:`check_reading` asks of them: exactly the six, the
    five integer ones of type ``int`` and ``temp_c`` an ``int`` or a ``float``, each within its
    limits, ``dia`` below ``sys`` (NaN and the infinities fail the range test; an integer beyond
    a double's range is compared exactly and fails it too).

    The one test of the common case for both one-pass paths, the bridge's :func:`all_pass` and
    the stream's ``reading_leaf`` (ingest/leafpath.py): anything it refuses goes the checking
    way, which says why."""
    if type(vitals) is not dict or vitals.keys() != _VITAL_SET:
        return False
    hr, spo2, rr, temp, sys_, dia = (vitals["hr"], vitals["spo2"], vitals["rr"],
                                     vitals["temp_c"], vitals["sys"], vitals["dia"])
    kind = type(temp)
    return (type(hr) is int and type(spo2) is int and type(rr) is int
            and type(sys_) is int and type(dia) is int
            and (kind is float or kind is int)
            and _HR[0] <= hr <= _HR[1] and _SPO2[0] <= spo2 <= _SPO2[1]
            and _RR[0] <= rr <= _RR[1] and _SYS[0] <= sys_ <= _SYS[1]
            and _DIA[0] <= dia <= _DIA[1] and dia < sys_
            and _TEMP[0] <= temp <= _TEMP[1])


def all_pass(items: list[Any], device_id: str, latest_us: int) -> bool:
    """Whether every one of ``items`` passes :func:`check_reading` and names ``device_id`` (a
    device id that matches ``ID_PATTERN``: the topic's) with ``ts_us <= latest_us``.

    Why: the bridge checked each reading (keys, types, ids, limits) and then its context, one
    function each, looking the same values up again: the largest per-reading cost of validation
    after the parse (docs/PERFORMANCE.md, branch ``bridge5``). This is the same verdict in one
    pass for the common case; False sends the message through :func:`_check_items`, which finds
    each refusal and its detail as before. A ``device_id`` equal to the topic's matches
    ``ID_PATTERN`` as the topic's does, and a message's readings usually share one patient id,
    matched once. tests/test_validation_onepass.py checks the verdicts by hypothesis."""
    patient_ok = None
    for item in items:
        if type(item) is not dict or item.keys() != READING_FIELDS:
            return False
        patient_id, seq, ts_us, vitals = (item["patient_id"], item["seq"], item["ts_us"],
                                          item["vitals"])
        if (type(item["device_id"]) is not str or item["device_id"] != device_id
                or type(patient_id) is not str or type(seq) is not int or type(ts_us) is not int
                or not _SEQ_RANGE[0] <= seq <= _SEQ_RANGE[1]
                or not _TS_RANGE[0] <= ts_us <= _TS_RANGE[1] or ts_us > latest_us
                or not plain_vitals(vitals)):
            return False
        if patient_id != patient_ok:
            if _ID.fullmatch(patient_id) is None:
                return False
            patient_ok = patient_id
    return True


def checked_signed_bytes(key_id: str, readings: list[dict[str, Any]]) -> bytes:
    """The signed object's bytes (``devicekeys.signed_envelope`` around each reading's JCS text)
    in one call of orjson: only for readings that passed :func:`check_reading` and a key id
    matching ``KEY_ID`` (32 lower-case hex digits).

    Why the same bytes: for such values orjson with sorted keys writes JCS (ASCII ids with
    nothing to escape, integers within 2**53 - 1, ``temp_c`` finite within 25..45 in its
    shortest round-trip digits, as ``repr``), except an integral float, which it writes ``37.0``
    where JCS writes ``37``. ``temp_c`` is the last member of a reading's sorted vitals and
    ``}}`` occurs only where a reading closes, so ``.0}}`` is exactly such a float's tail.
    tests/test_validation_onepass.py checks the bytes against ``rfc8785`` by hypothesis."""
    return orjson.dumps({"key_id": key_id, "readings": readings},
                        option=orjson.OPT_SORT_KEYS).replace(b".0}}", b"}}")


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def device_id_from_topic(topic: str) -> str | None:
    """The device id of ``vitals/<shard>/<device_id>`` or of the former ``vitals/<device_id>``
    (docs/DEVICES.md); None for any other shape. Which shard a device may use is the broker's
    access rule (one topic per device), not re-checked here."""
    parts = split_topic(topic)
    if parts is None:
        return None
    device_id = parts[1]
    return device_id if _ID.fullmatch(device_id) else None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Reject("malformed_json", f"duplicate key {key!r}")
            seen.add(key)
    return result


def _no_constants(name: str) -> Any:
    raise _Reject("malformed_json", f"{name} is not JSON")


def _brackets_outside_strings(payload: bytes) -> bytes:
    """The brackets of ``payload`` that are not inside JSON strings, in order.

    Without a backslash every string ends at the next quote, so with an even number of quotes
    the text between odd and even quotes is string (C-speed split); otherwise the string regex
    decides (it is slow on long payloads: a raw-topic record with its signed message is ~3 KB)."""
    if b"\\" not in payload:
        kept = payload.translate(None, _NOT_BRACKETS_OR_QUOTES)
        if not kept.count(b'"') % 2:
            return b"".join(kept.split(b'"')[::2])
    return _JSON_STRING.sub(b"", payload).translate(None, _NOT_BRACKETS)


def _too_deep(payload: bytes) -> bool:
    """Whether brackets outside strings nest deeper than :data:`MAX_DEPTH` (cheap when shallow)."""
    if payload.count(b"[") + payload.count(b"{") <= MAX_DEPTH:
        return False
    # Many brackets (a batch, a raw-topic record): peel adjacent pairs off the brackets alone,
    # in C (bytes.replace). A round peels at most two levels ("[{}]" goes in one), so brackets
    # gone within MAX_DEPTH // 2 rounds are balanced and nest at most MAX_DEPTH deep; anything
    # else (deeper, unbalanced, interleaved) is judged by the exact count below.
    brackets = _brackets_outside_strings(payload)
    for _ in range(MAX_DEPTH // 2):
        peeled = brackets.replace(b"{}", b"").replace(b"[]", b"")
        if not peeled:
            return False
        if peeled == brackets:
            break
        brackets = peeled
    return _too_deep_exact(payload)


def _too_deep_exact(payload: bytes) -> bool:
    """The exact count: every bracket outside strings, in order (the reference the fast path
    of :func:`_too_deep` is tested against)."""
    depth = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub(b"", payload)):
        depth += 1 if bracket in b"[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def parse(payload: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys (two parsers must never disagree)."""
    if _too_deep(payload):
        raise _Reject("malformed_json", f"nesting deeper than {MAX_DEPTH}")
    try:
        return json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates,
                          parse_constant=_no_constants)
    except _Reject:
        raise
    except UnicodeDecodeError as exc:
        raise _Reject("malformed_json", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise _Reject("malformed_json", f"invalid JSON: {exc.msg} at char {exc.pos}") from None
    except (ValueError, RecursionError) as exc:  # huge int literals, absurd nesting
        raise _Reject("malformed_json", f"invalid JSON: {type(exc).__name__}") from None


def parse_canonical(payload: bytes) -> Any:
    """:func:`parse`, exactly (same values, same refusals, same details), fast for a payload that
    is orjson's own spelling of what it holds (what our bridge writes to the raw topic).

    Why exact: orjson alone is more lenient in one way (it keeps the last of duplicate keys) and
    stricter in others (huge integers become floats, lone surrogates are refused). Its result is
    taken only when dumping it again gives back ``payload`` byte for byte: then the payload has
    no duplicate key, no NaN/Infinity, no whitespace, no escape other than the ones orjson writes
    and no number that is not its value's own spelling, so the strict parser reads the same
    values from it. The nesting guard runs on both paths. Anything else (a record from an older
    bridge, a hand-made value) goes to :func:`parse`, which refuses or accepts it as before.
    ``tests/test_record_fastparse.py`` checks the two agree on generated valid and invalid values;
    :func:`validate` reads device payloads with it too (a device's compact JSON is usually orjson's
    spelling: 10 us instead of 30 us per signed message of 10 readings), and
    ``tests/test_payload_fastparse.py`` checks validate's whole outcome is the strict one.
    """
    try:
        obj = orjson.loads(payload)
        spelled = orjson.dumps(obj)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        # orjson reads up to 1,024 levels but writes only 254: deeper goes to the strict parser
        # (whose nesting guard refuses it), never out of here as orjson's TypeError.
        return parse(payload)
    if spelled != payload or _too_deep(payload):
        return parse(payload)
    return obj


def _check_id(obj: dict[str, Any], name: str) -> None:
    value = obj[name]
    if type(value) is not str:
        raise _Reject("schema", f"{name} must be a string, got {type(value).__name__}")
    if not _ID.fullmatch(value):
        raise _Reject("schema", f"{name} {value[:80]!r} does not match {ID_PATTERN}")


def check_reading(obj: Any) -> dict[str, Any]:
    """Context-free checks of one reading (types, field set, limits); raises ``_Reject``."""
    if type(obj) is not dict:
        raise _Reject("schema", f"reading must be an object, got {type(obj).__name__}")
    keys = obj.keys()
    if keys != READING_FIELDS:
        missing = sorted(READING_FIELDS - keys)
        if missing:
            raise _Reject("schema", f"missing field {missing[0]}")
        raise _Reject("schema", f"unexpected field {sorted(keys - READING_FIELDS)[0]}")
    _check_id(obj, "device_id")
    _check_id(obj, "patient_id")
    for name, (low, high) in _INT_RANGES.items():
        value = obj[name]
        if type(value) is not int:
            raise _Reject("schema", f"{name} must be an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise _Reject("out_of_range", f"{name}={value} outside limit {low}..{high}")
    vitals = obj["vitals"]
    if type(vitals) is not dict:
        raise _Reject("schema", f"vitals must be an object, got {type(vitals).__name__}")
    vkeys = vitals.keys()
    if vkeys != _VITAL_SET:
        missing = [v for v in VITAL_FIELDS if v not in vkeys]
        if missing:
            raise _Reject("schema", f"missing field vitals.{missing[0]}")
        raise _Reject("schema", f"unexpected field vitals.{sorted(vkeys - _VITAL_SET)[0]}")
    for name in VITAL_FIELDS:
        value = vitals[name]
        kind = type(value)
        if name in _NUMBER_VITALS:
            if kind is not float and kind is not int:
                raise _Reject("schema", f"vitals.{name} must be a number, got {kind.__name__}")
            # Only a float can be non-finite; math.isfinite of an integer beyond a double's
            # range (a 400-digit literal parses to one) raises OverflowError instead of answering.
            if kind is float and not math.isfinite(value):
                raise _Reject("out_of_range", f"vitals.{name}={value} is not finite")
        elif kind is not int:
            raise _Reject("schema", f"vitals.{name} must be an integer, got {kind.__name__}")
        low, high = VITAL_LIMITS[name]
        if not low <= value <= high:
            raise _Reject("out_of_range",
                          f"vitals.{name}={value} outside limit {low}..{high}")
    if vitals["dia"] >= vitals["sys"]:
        raise _Reject("out_of_range",
                      f"vitals.dia={vitals['dia']} must be below vitals.sys={vitals['sys']}")
    return obj


def _check_context(reading: dict[str, Any], device_id: str, now_us: int, latest_us: int) -> None:
    if reading["device_id"] != device_id:
        raise _Reject("device_mismatch",
                      f"device_id {reading['device_id']!r} does not match the topic's "
                      f"device {device_id!r}")
    if reading["ts_us"] > latest_us:
        ahead = (reading["ts_us"] - now_us) / 1e6
        raise _Reject("future_timestamp",
                      f"ts_us={reading['ts_us']} is {ahead:.1f}s ahead of the bridge clock, "
                      f"limit {(latest_us - now_us) / 1e6:g}s")


def _check_signed(doc: dict[str, Any], items: list[Any], given: list[Any], signed: bool,
                  device_id: str, signatures: SignatureCheck, required: bool
                  ) -> SignedMessage | None:
    """The message's signature, checked over ``given`` (``items``, or them as
    :class:`SignedReadings`); raises ``_Reject("bad_signature")``."""
    if not signed:
        if required:
            raise _Reject("bad_signature", "message is not signed (device signatures are "
                                           "required: VITALCHAIN_DEVICE_SIGNATURES)")
        return None
    key_id, sig = doc.get("key_id"), doc.get("sig")
    if type(key_id) is not str or not 1 <= len(key_id) <= 64:
        raise _Reject("bad_signature", "key_id must be a string of 1..64 characters")
    why = signatures(device_id, key_id, sig, given)
    if why is not None:
        raise _Reject("bad_signature", why)
    return SignedMessage(key_id, sig, items)


def validate(topic: str, payload: bytes, now_us: int, *, max_payload_bytes: int,
             max_future_seconds: float, signatures: SignatureCheck | None = None,
             require_signature: bool = False) -> Outcome:
    """Validate one MQTT message. Never raises: every problem becomes a :class:`Rejection`.

    A signed message is ``{"key_id", "sig", "readings"}``. With ``signatures`` the signature is
    checked over the readings *as sent* before any reading is looked at (so it covers invalid
    ones too), and a missing (``require_signature``), malformed or failing one refuses the whole
    message as ``bad_signature``: no reading of it can be trusted to come from the device.
    Without ``signatures`` the envelope is accepted and not checked (``outcome.signed`` None).
    """
    device_id = device_id_from_topic(topic)
    outcome = Outcome(device_id)
    if len(payload) > max_payload_bytes:
        outcome.rejections.append(Rejection(
            "oversized", f"payload is {len(payload)} bytes, limit {max_payload_bytes}"))
        return outcome
    if device_id is None:
        outcome.rejections.append(Rejection("bad_topic", f"topic {topic[:200]!r} is not "
                                                         "vitals/<shard>/<device id>"))
        return outcome
    latest_us = now_us + int(max_future_seconds * 1_000_000)
    try:
        # Exactly parse()'s verdict and values; fast when the payload is orjson's own spelling
        # (what the simulator's firmware writes: compact, ASCII, shortest floats).
        doc = parse_canonical(payload)
        if type(doc) is not dict:
            raise _Reject("not_an_object", f"top-level JSON value is {type(doc).__name__}")
        signed = "sig" in doc or "key_id" in doc
        if "readings" not in doc:
            items, batch = [doc], False
            passed = all_pass(items, device_id, latest_us)
            if signed and signatures is not None:
                raise _Reject("bad_signature", "a signed message must be {key_id, sig, readings}")
        else:
            allowed = SIGNED_KEYS if signed else frozenset({"readings"})
            if doc.keys() - allowed:
                extra = sorted(doc.keys() - allowed)[0]
                raise _Reject("schema", f"unexpected field {extra} next to readings")
            items, batch = doc["readings"], True
            if type(items) is not list:
                raise _Reject("schema", f"readings must be an array, got {type(items).__name__}")
            if not items:
                raise _Reject("batch_empty", "readings is empty")
            if len(items) > MAX_BATCH:
                raise _Reject("batch_too_large", f"{len(items)} readings, limit {MAX_BATCH}")
            passed = all_pass(items, device_id, latest_us)
            # Readings that all pass name the topic's device: mixed only when some do not.
            named = set() if passed else {
                r["device_id"] for r in items
                if type(r) is dict and type(r.get("device_id")) is str}
            if len(named) > 1:
                raise _Reject("batch_mixed_devices",
                              f"readings name devices {sorted(named)[:5]}")
    except _Reject as reject:
        outcome.rejections.append(Rejection(reject.reason, reject.detail))
        return outcome
    # The readings are checked before the signature (pure checks, so the outcome is the same
    # as checking them after it): when all are valid, the signed bytes are written from them
    # without checking them again (SignedReadings).
    if passed:  # every reading passed every check (the common case, one pass)
        readings, indexes, rejections = list(items), list(range(len(items))), []
    else:
        readings, indexes, rejections = _check_items(items, batch, device_id, now_us, latest_us)
    if signatures is not None:
        given: list[Any] = items
        key_id = doc.get("key_id")
        if signed and not rejections and type(key_id) is str and KEY_ID.fullmatch(key_id):
            given = SignedReadings(items, checked_signed_bytes(key_id, readings))
        try:
            outcome.signed = _check_signed(doc, items, given, signed, device_id, signatures,
                                           require_signature)
        except _Reject as reject:
            outcome.rejections.append(Rejection(reject.reason, reject.detail))
            return outcome
    outcome.readings, outcome.reading_indexes, outcome.rejections = readings, indexes, rejections
    return outcome


def _check_items(items: list[Any], batch: bool, device_id: str, now_us: int, latest_us: int
                 ) -> tuple[list[dict[str, Any]], list[int], list[Rejection]]:
    """Each reading checked on its own: (valid readings, their indexes, rejections)."""
    readings: list[dict[str, Any]] = []
    indexes: list[int] = []
    rejections: list[Rejection] = []
    for index, item in enumerate(items):
        try:
            reading = check_reading(item)
            _check_context(reading, device_id, now_us, latest_us)
        except _Reject as reject:
            where = f"readings[{index}]: " if batch else ""
            rejections.append(Rejection(reject.reason, where + reject.detail,
                                        index if batch else None))
        else:
            readings.append(reading)
            indexes.append(index)
    return readings, indexes, rejections
