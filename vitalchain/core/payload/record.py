"""The raw topic's record format: written by the bridge, read by the stream (one definition).

Why one module: the bridge and the stream are separate processes, and a Kafka topic outlives both
(records written by an older bridge may still be unread after an upgrade), so the format is a
wire contract.  Both sides import it from here; docs/STREAM.md ("The raw topic's records")
describes it for anyone else.

Version 2 (what the bridge writes): **one record per accepted MQTT message**, keyed by the device
id, holding every reading of the message that the bridge forwards::

    {"v": 2, "received_us": <bridge clock>, "readings": [<reading>, ...],
     "signed": {"at": [ts_us, seq], "key_id": ..., "sig": ..., "readings": [...]}}

``signed`` only for a message whose device signature verified; ``at`` names the message by its
first forwarded reading (``readings[0]``), its ``readings`` are the message's readings as sent.
When those are exactly the forwarded readings (every reading of the message valid and kept, the
usual case) ``signed`` has no ``readings`` member, ``{"at", "key_id", "sig"}``, and means the
record's ``readings``: carried, parsed and checked once (:func:`decode` gives the whole part
back, so readers see one shape; records with both copies, from an older bridge, still read).
One record per message instead of one per reading cuts the per-record cost of Kafka, Faust and
aiokafka by the batch size (docs/PERFORMANCE.md); the readings are validated by the bridge and
checked again one by one by the stream.

A record the bridge writes again (``ingest/replay.py``: Kafka lost or renumbered what it had
acknowledged) carries ``"replayed_us": <bridge clock at the replay>`` as its last member, in
either version: the same readings, never the same bytes (the stream tells incarnations of a
partition apart by the bytes of the record at a sealed offset, docs/STREAM.md "Epochs").

Bundles (the framing, around records of either version): **one Kafka record may hold several
messages' records**, joined by a newline (``b"\n"``), in the order the bridge accepted them::

    <record>\n<record>\n...<record>

Compact JSON never holds a raw newline byte (inside strings it is escaped, and UTF-8 never puts
0x0A inside a multi-byte character), so the split is exact, and a bundle of one message is
byte-identical to that message's record: a reader of bundles reads every record ever written, and
a bridge writing one message per record writes what it always did. The framing is only
:func:`encode_bundle` / :func:`split_bundle`; each part is then read by :func:`decode`, so the
inner format can change without touching it. Why: Kafka, tansu, aiokafka and Faust cost per
record, not per byte (docs/DECISIONS.md, "several MQTT messages in one Kafka record").

Version 1 (before; still accepted, never written): one reading per record, the device's fields
plus ``received_us`` and, for a signed message, ``signed`` (``{"at"}``, or on the message's first
reading ``{"at", "key_id", "sig", "readings"}``).  A version-1 value has no ``"v"`` member.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import orjson

from vitalchain.core.payload.limits import MAX_BATCH

VERSION = 2
BUNDLE_SEPARATOR = b"\n"
# Bounds of one bundle (the bridge's): Kafka's default max.request.size is 1 MiB, and a record of
# a signed message of 10 readings is about 3 KB, so 64 of them stay far below it.
MAX_BUNDLE_MESSAGES = 64
MAX_BUNDLE_BYTES = 256 << 10
_V2_KEYS = frozenset({"v", "received_us", "readings"})
_V2_SIGNED_KEYS = frozenset({"v", "received_us", "readings", "signed"})
# A version-2 signed part without "readings": the message's readings are the record's own.
_SIGNED_ONCE_KEYS = frozenset({"at", "key_id", "sig"})
_REPLAYED_MEMBER = b',"replayed_us":'
_REPLAY_STAMP = re.compile(rb',"replayed_us":\d+}\Z')


class RecordError(ValueError):
    """A raw-topic value that is not a record of any known version (or not well-formed)."""


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A decoded raw-topic record.  ``readings`` are as written, *not yet checked* one by one
    (:func:`vitalchain.core.payload.validation.check_reading` is the caller's, per reading, so one
    bad reading does not take its neighbours down).  ``signed`` is the message's signed part for
    version 2; for version 1 it is the reading's own ``signed`` member (``{"at"}`` or whole)."""

    version: int
    received_us: int
    readings: list[Any]
    signed: dict[str, Any] | None
    replayed_us: int | None = None  # set on a record the bridge wrote again

    def signed_part(self, index: int, carries_message: bool) -> dict[str, Any] | None:
        """What reading ``index`` carries of its signed message, in version 1's per-reading
        shape (what the storage writes from): ``{"at"}``, or the whole part when
        ``carries_message`` (the reading whose point brings the message's point along)."""
        if self.signed is None:
            return None
        if self.version == 1:
            return self.signed
        if carries_message:
            return self.signed
        return {"at": self.signed["at"]}


def _dumps(obj: dict[str, Any]) -> bytes:
    """orjson's spelling (what :func:`decode` reads fast, see ``parse_canonical``); the stdlib's
    compact ASCII spelling for what orjson cannot write (a signed message's readings are kept as
    sent, valid or not: an integer beyond 64 bits, a lone surrogate from a ``\\ud800`` escape,
    which UTF-8 cannot carry unescaped), which the stream then reads with the strict parser."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def encode(readings: list[dict[str, Any]], received_us: int,
           signed: dict[str, Any] | None = None) -> bytes:
    """A version-2 value: ``readings`` exactly as the device sent them (already validated)."""
    obj: dict[str, Any] = {"v": VERSION, "received_us": received_us, "readings": readings}
    if signed is not None:
        if _same_readings(signed.get("readings"), readings):
            signed = {k: v for k, v in signed.items() if k != "readings"}  # carried once
        obj["signed"] = signed
    return _dumps(obj)


def _same_readings(sent: Any, forwarded: list[dict[str, Any]]) -> bool:
    """Whether a signed message's readings as sent are exactly the readings forwarded (every
    reading of the message valid and kept): the same objects, or the same orjson spelling (which
    tells 1, 1.0 and true apart, unlike ``==``)."""
    if type(sent) is not list or len(sent) != len(forwarded):
        return False
    if all(a is b for a, b in zip(sent, forwarded, strict=True)):
        return True
    try:
        return orjson.dumps(sent) == orjson.dumps(forwarded)
    except orjson.JSONEncodeError:
        return False


def encode_v1(reading: dict[str, Any], received_us: int,
              signed: dict[str, Any] | None = None) -> bytes:
    """A version-1 value (one reading): only for tests and benches of the upgrade path."""
    extra: dict[str, Any] = {"received_us": received_us}
    if signed is not None:
        extra["signed"] = signed
    # The stdlib's spelling, as the bridges that wrote version 1 did.
    return json.dumps({**reading, **extra}, separators=(",", ":"), ensure_ascii=False).encode()


def encode_bundle(parts: list[bytes]) -> bytes:
    """One Kafka value holding ``parts`` (records from :func:`encode`), in order; a bundle of one
    part is that part.  Refuses a part holding a newline (not compact JSON: the split would be
    wrong) or an empty bundle."""
    if not parts:
        raise RecordError("a bundle holds at least one record")
    for part in parts:
        if BUNDLE_SEPARATOR in part:
            raise RecordError("a record inside a bundle must not hold a newline byte")
    return BUNDLE_SEPARATOR.join(parts)


def split_bundle(value: bytes) -> list[bytes]:
    """The records of a Kafka value, in order (one for a value that is not a bundle).  An empty
    part (two separators in a row, a trailing one) is returned as it is: :func:`decode` refuses
    it, so it becomes a dead letter like any malformed record."""
    return value.split(BUNDLE_SEPARATOR)


def replayed(value: bytes, replayed_us: int) -> bytes:
    """``value`` (a record of either version, or a bundle of them) stamped as written again at
    ``replayed_us``: each record gets the stamp as its last member; an earlier stamp is
    replaced, so a record replayed twice still has one."""
    if BUNDLE_SEPARATOR in value:
        return BUNDLE_SEPARATOR.join(_stamped(part, replayed_us)
                                     for part in split_bundle(value))
    return _stamped(value, replayed_us)


def _stamped(value: bytes, replayed_us: int) -> bytes:
    if not value.endswith(b"}"):
        raise RecordError("a raw record value is a JSON object")
    if _REPLAY_STAMP.search(value):
        value = value[:value.rindex(_REPLAYED_MEMBER)] + b"}"
    return b"%s%s%d}" % (value[:-1], _REPLAYED_MEMBER, replayed_us)


def check_signed_part(signed: Any) -> dict[str, Any]:
    """The shape of a ``signed`` member: ``{"at"}`` or ``{"at", "key_id", "sig", "readings"}``."""
    if type(signed) is not dict:
        raise RecordError("signed must be an object")
    at = signed.get("at")
    if (type(at) is not list or len(at) != 2 or not all(type(v) is int and v >= 0 for v in at)):
        raise RecordError("signed.at must be [ts_us, seq]")
    if signed.keys() == {"at"}:
        return signed
    if signed.keys() != {"at", "key_id", "sig", "readings"}:
        raise RecordError("signed must be {at} or {at, key_id, sig, readings}")
    if (type(signed["key_id"]) is not str or type(signed["sig"]) is not str
            or type(signed["readings"]) is not list):
        raise RecordError("signed.key_id/sig must be strings and signed.readings an array")
    return signed


def decode(value: bytes) -> RawRecord:
    """Parse a raw-topic value of either version; raises :class:`RecordError`.

    Strict JSON (duplicate keys, NaN refused: the bridge's own parser, with orjson's fast path for
    a value in orjson's own spelling, which the bridge writes), exact member sets, so a record that
    did not come from a bridge of ours is refused rather than half-read."""
    from vitalchain.core.payload.validation import parse_canonical

    try:
        obj = parse_canonical(value)
    except Exception as exc:
        raise RecordError(getattr(exc, "detail", None) or str(exc)) from None
    if type(obj) is not dict:
        raise RecordError("record value is not a JSON object")
    received_us = obj.pop("received_us", None)
    if type(received_us) is not int or received_us < 0:
        raise RecordError("record lacks integer received_us")
    replayed_us = obj.pop("replayed_us", None)
    if replayed_us is not None and (type(replayed_us) is not int or replayed_us < 0):
        raise RecordError("replayed_us must be a non-negative integer")
    if "v" not in obj:
        signed = obj.pop("signed", None)
        return RawRecord(1, received_us, [obj],
                         None if signed is None else check_signed_part(signed), replayed_us)
    obj["received_us"] = received_us
    if obj["v"] != VERSION or type(obj["v"]) is not int:
        raise RecordError(f"unknown record version {obj['v']!r}")
    if obj.keys() != _V2_KEYS and obj.keys() != _V2_SIGNED_KEYS:
        raise RecordError(f"a version-2 record has exactly {sorted(_V2_SIGNED_KEYS)} "
                          f"(signed optional), not {sorted(obj.keys())}")
    readings = obj["readings"]
    if type(readings) is not list or not 1 <= len(readings) <= MAX_BATCH:
        raise RecordError(f"readings must be an array of 1..{MAX_BATCH} readings")
    signed = obj.get("signed")
    if signed is not None:
        if type(signed) is dict and signed.keys() == _SIGNED_ONCE_KEYS:
            # The message's readings are the record's (carried once): the whole part again.
            signed = check_signed_part({**signed, "readings": readings})
        else:
            signed = check_signed_part(signed)
        if signed.keys() == {"at"}:
            raise RecordError("a version-2 record's signed part carries the whole message")
    return RawRecord(VERSION, received_us, readings, signed, replayed_us)


def record_readings(value: bytes) -> list[dict[str, Any]]:
    """Every reading of a raw-topic value (a record or a bundle), in order, each with its
    message's ``received_us`` (and its ``signed`` part as a version-1 record would carry it):
    how a reader that thinks in readings sees any version."""
    out = []
    for raw in split_bundle(value):
        record = decode(raw)
        for i, reading in enumerate(record.readings):
            item = {**reading, "received_us": record.received_us}
            part = record.signed_part(i, i == 0)
            if part is not None:
                item["signed"] = part
            out.append(item)
    return out
