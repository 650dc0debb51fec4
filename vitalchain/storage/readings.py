"""How a canonical reading is stored in InfluxDB and rebuilt from it: the ONE definition.

Sealing writes, and auditing/proving reads back, so both directions live here and nowhere else.

Measurement ``readings``: tags ``device_id``, ``patient_id``; fields ``hr, spo2, rr, temp_c, sys,
dia`` (always floats, so InfluxDB never sees a field type change), ``seq`` (integer), ``salt``
(hex string), ``window_id`` (string), ``late`` (bool), ``received_us`` (integer).  Points written
before D39 also have ``leaf`` (hex of the leaf hash); it was never read as evidence (the leaf is
recomputed from the point and compared with the ledger's: :func:`stored_leaf`), so the stream no
longer writes it, and points with or without it read and verify alike.

Timestamp rule: ``time_ns = ts_us * 1000 + seq % 1000``.  InfluxDB identifies a point by
measurement + tag set + timestamp, so two readings of one device stamped in the same microsecond
would otherwise overwrite each other; the sub-microsecond digits carry ``seq % 1000`` and
``ts_us = (time_ns - seq % 1000) // 1000`` recovers the device's timestamp exactly.  Two readings
of one device collide only if they share ``ts_us`` *and* ``seq % 1000`` (a device repeating a
timestamp across 1000 sequence numbers), which the stream never expects from a working device.

A reading from a signed message also has ``sig_at`` (integer): the timestamp of its message's
point in measurement ``signed_messages`` (tag ``device_id``; fields ``key_id``, ``sig``, and
either ``readings`` = the JSON array of the message's readings as the device sent them, or,
since D45, ``count`` and ``last_at`` when the message's readings can be rebuilt exactly from
their own ``readings`` points: the ``count`` points of the device with ``sig_at`` equal to the
message's time, from that time to ``last_at``, in time order), whose time is ``point_time_ns``
of the message's first forwarded reading. One point per message, however many readings it had
(docs/STREAM.md, "Device signatures"). A point holding ``readings`` is read from it whatever
else it holds (a rewrite merges fields; the JSON is the device's own words).

Measurement ``windows``: tags ``partition``, ``window_id``; fields ``root``, ``size``,
``start_us``, ``end_us``, ``first_offset``, ``last_offset``, ``log_index``, ``status``;
timestamp ``start_us * 1000`` ns.

Rewriting the same point replaces it with identical data, which is what makes sealing idempotent
under replay.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from vitalchain.core.integrity import CanonicalError, reading_leaf_hash
from vitalchain.errors import Altered
from vitalchain.storage.influx import Point

READINGS_MEASUREMENT = "readings"
SIGNED_MEASUREMENT = "signed_messages"
WINDOWS_MEASUREMENT = "windows"
VITAL_FIELDS = ("hr", "spo2", "rr", "temp_c", "sys", "dia")
# Vitals the devices send as integers (docs/ARCHITECTURE.md); temp_c is a float.
INTEGER_VITALS = frozenset({"hr", "spo2", "rr", "sys", "dia"})
SUB_US_SLOTS = 1000


class StoredReadingError(Altered, ValueError):
    """A point read back from InfluxDB cannot be turned into a canonical reading."""


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as read back: the canonical object plus what the pipeline recorded with it."""

    canonical: dict[str, Any]
    leaf_hex: str | None  # the stored leaf field, only on points written before D39; never trusted
    window_id: str
    late: bool
    received_us: int
    sig_at: int | None = None  # time of its signed message's point, if it came signed


def point_time_ns(ts_us: int, seq: int) -> int:
    """The InfluxDB timestamp of a reading (see the module docstring)."""
    return ts_us * 1000 + seq % SUB_US_SLOTS


def ts_us_from_time_ns(time_ns: int, seq: int) -> int:
    rest = time_ns - seq % SUB_US_SLOTS
    if rest % 1000:
        raise StoredReadingError(f"timestamp {time_ns} does not match seq {seq}")
    return rest // 1000


def reading_point(canonical: Mapping[str, Any], leaf: bytes | None, window_id: str, late: bool,
                  received_us: int, sig_at: int | None = None) -> Point:
    """The ``readings`` point of one canonical reading (device fields + salt).

    ``leaf``: ``None`` for the shape the stream writes since D39 (no ``leaf`` field: it was never
    read, only recomputed, and it was a sixth of influxd's CPU per point); bytes to write a point
    in the older shape, which every reader still accepts (tests of stores written before D39)."""
    vitals = canonical["vitals"]
    fields: dict[str, float | int | bool | str] = {
        name: float(vitals[name]) for name in VITAL_FIELDS
    }
    fields.update(seq=int(canonical["seq"]), salt=str(canonical["salt"]))
    if leaf is not None:
        fields["leaf"] = leaf.hex()
    fields.update(window_id=window_id, late=bool(late), received_us=int(received_us))
    if sig_at is not None:
        fields["sig_at"] = int(sig_at)
    return Point(READINGS_MEASUREMENT,
                 {"device_id": canonical["device_id"], "patient_id": canonical["patient_id"]},
                 fields, point_time_ns(int(canonical["ts_us"]), int(canonical["seq"])))


# A reading whose tags need no escaping (every id the validator lets through: ID_PATTERN) and whose
# string fields need no quoting is formatted by one f-string; anything else goes through
# Point.to_line.  Identical bytes either way (tests/test_reading_lines.py).
_PLAIN = re.compile(r"[A-Za-z0-9_.-]+")
# "<measurement>,device_id=..,patient_id=.. " per (device, patient): the tags' escaping check is
# made once per device, not per reading.  Bounded: cleared past _HEADS_MAX (a new fleet).
_HEADS: dict[tuple[str, str], str] = {}
_SIGNED_HEADS: dict[str, str] = {}
_HEADS_MAX = 200_000

# repr(float(x)) of the vitals seen so far, keyed by x: vitals repeat (integers in small ranges,
# temperatures to one decimal), and the repr is a third of a line's cost.  Keyed by value, so an
# int and the float equal to it share an entry (float(72) and 72.0 have one repr; Python compares
# int and float exactly); zero is never cached (0 == -0.0, whose repr differs).  Bounded.
_FLOAT_TEXT: dict[float, str] = {}
_FLOAT_TEXT_MAX = 65_536


def _float_text(value: Any) -> str:
    """``repr(float(value))``, remembered; ``""`` if not finite (the caller takes the slow path,
    which refuses it as before)."""
    number = float(value)
    if not math.isfinite(number):
        return ""
    spelled = repr(number)
    if number != 0.0 and len(_FLOAT_TEXT) < _FLOAT_TEXT_MAX:
        _FLOAT_TEXT[value] = spelled
    return spelled


ReadingRow = tuple[Mapping[str, Any], "bytes | None", str, bool, int, "int | None"]


def _quotable(text: object) -> bool:
    """True if ``text`` is a str that a line-protocol string field holds between quotes as is."""
    return type(text) is str and "\\" not in text and '"' not in text and "\n" not in text


def _head(device: str, patient: str) -> str | None:
    key = (device, patient)
    head = _HEADS.get(key)
    if head is None:
        plain = _PLAIN.fullmatch
        if type(device) is not str or type(patient) is not str or not (
                plain(device) and plain(patient)):
            return None
        if len(_HEADS) >= _HEADS_MAX:
            _HEADS.clear()
        head = _HEADS[key] = f"{READINGS_MEASUREMENT},device_id={device},patient_id={patient} "
    return head


def reading_lines(rows: Iterable[ReadingRow]) -> list[str]:
    """Line protocol of many readings at once: ``(canonical, leaf, window_id, late, received_us,
    sig_at)`` each, the same bytes as ``reading_point(canonical, None, ...).to_line()`` (the row's
    leaf is not written: D39) without building a :class:`Point` or a dict per reading (the stream
    writes every reading it takes; issue #14).  One f-string per reading; the tag head is made
    once per device and the window id checked once per run of equal ids."""
    out: list[str] = []
    append = out.append
    text = _FLOAT_TEXT.get
    last_window: object = None
    for canonical, _leaf, window_id, late, received_us, sig_at in rows:
        head = _head(canonical["device_id"], canonical["patient_id"])
        seq, ts_us, salt = canonical["seq"], canonical["ts_us"], canonical["salt"]
        if window_id is not last_window:
            last_window = window_id if _quotable(window_id) else None
        v = canonical["vitals"]
        hr, spo2, rr, temp, sys_, dia = (v["hr"], v["spo2"], v["rr"], v["temp_c"], v["sys"],
                                         v["dia"])
        hr, spo2, rr = text(hr) or _float_text(hr), text(spo2) or _float_text(spo2), \
            text(rr) or _float_text(rr)
        temp, sys_, dia = text(temp) or _float_text(temp), text(sys_) or _float_text(sys_), \
            text(dia) or _float_text(dia)
        if (head is None or last_window is None or type(seq) is not int
                or type(ts_us) is not int or type(received_us) is not int
                or not (type(salt) is str and salt.isalnum())
                or not (hr and spo2 and rr and temp and sys_ and dia)
                or (sig_at is not None and type(sig_at) is not int)):
            append(reading_point(canonical, None, window_id, late, received_us,
                                 sig_at).to_line())
            continue
        tail = (f" {ts_us * 1000 + seq % SUB_US_SLOTS}" if sig_at is None
                else f",sig_at={sig_at}i {ts_us * 1000 + seq % SUB_US_SLOTS}")
        append(f"{head}hr={hr},spo2={spo2},rr={rr},temp_c={temp},sys={sys_},dia={dia},"
               f"seq={seq}i,salt=\"{salt}\",window_id=\"{window_id}\","
               f"late={'true' if late else 'false'},received_us={received_us}i{tail}")
    return out


def signed_at(signed: Mapping[str, Any]) -> int:
    """The ``signed_messages`` point time of a record's ``signed`` member (its ``at``)."""
    ts_us, seq = signed["at"]
    return point_time_ns(int(ts_us), int(seq))


def _signed_readings_json(signed: Mapping[str, Any]) -> str:
    """The readings as JSON: orjson's spelling (a third of the stdlib's cost per message on the
    stream's path), the stdlib's for what orjson cannot write (an integer beyond 64 bits in a
    reading as sent). Readers parse it (:func:`signed_message_from_row`) and the signature is
    checked over the parsed readings, so only the values matter, not the spelling."""
    try:
        return orjson.dumps(signed["readings"]).decode()
    except orjson.JSONEncodeError:
        return json.dumps(signed["readings"], separators=(",", ":"), ensure_ascii=False)


# A signed reading as the device sends it: the canonical reading's members but the salt.
SIGNED_READING_KEYS = frozenset({"device_id", "patient_id", "seq", "ts_us", "vitals"})
_SORTED = orjson.OPT_SORT_KEYS


def signed_rebuildable(signed: Mapping[str, Any],
                       kept: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a signed message's readings as sent can be rebuilt exactly from ``kept``: the
    canonical readings written with this message's ``sig_at`` in the same write, in message
    order (D45).

    True only if ``kept`` is every reading of the message, each the one sent in every member but
    the salt: made of the very same objects (the stream's usual case: its canonical reading
    reuses the parsed reading's members), or else spelled alike by orjson with sorted keys (so
    of the same types too: ``72`` is not ``72.0``, ``true`` is not ``1``); and their point
    times strictly increase from the message's own time (so "the points with this ``sig_at``,
    in time order" is the message's order).  The readings were checked against the schema's
    limits before they were kept, so every vital is one a float64 field holds exactly and the
    rebuilt readings' JCS, which the device signed, is the sent ones'.  Anything else (a
    rejected or duplicate reading, a member more or less, another order or spelling) keeps the
    readings' JSON in the message's point.
    """
    sent = signed.get("readings")
    if type(sent) is not list or not sent or len(sent) != len(kept):
        return False
    last = -1
    same_objects = True  # the stream's usual case: each kept reading made of the sent one's objects
    keys = SIGNED_READING_KEYS
    for r, c in zip(sent, kept, strict=True):
        if type(r) is not dict or r.keys() != keys:
            return False
        seq, ts_us = r["seq"], r["ts_us"]
        if type(seq) is not int or type(ts_us) is not int:
            return False
        at = ts_us * 1000 + seq % SUB_US_SLOTS
        if at <= last:
            return False
        last = at
        if same_objects and not (seq is c["seq"] and ts_us is c["ts_us"]
                                 and r["vitals"] is c["vitals"]
                                 and r["device_id"] is c["device_id"]
                                 and r["patient_id"] is c["patient_id"]):
            same_objects = False
    if same_objects:
        return point_time_ns(sent[0]["ts_us"], sent[0]["seq"]) == signed_at(signed)
    try:
        same = orjson.dumps(sent, option=_SORTED) == orjson.dumps(
            [{"device_id": c["device_id"], "patient_id": c["patient_id"], "seq": c["seq"],
              "ts_us": c["ts_us"], "vitals": c["vitals"]} for c in kept], option=_SORTED)
    except (orjson.JSONEncodeError, KeyError, TypeError):
        return False
    return same and point_time_ns(sent[0]["ts_us"], sent[0]["seq"]) == signed_at(signed)


def _last_at(signed: Mapping[str, Any]) -> int:
    last = signed["readings"][-1]
    return point_time_ns(last["ts_us"], last["seq"])


def signed_message_point(device_id: str, signed: Mapping[str, Any],
                         kept: Sequence[Mapping[str, Any]] | None = None) -> Point:
    """The ``signed_messages`` point of a message (from the record that carries it whole).

    ``kept``: the canonical readings written with it (same write, message order); when they
    rebuild the message exactly (:func:`signed_rebuildable`) the point holds ``count`` and
    ``last_at`` instead of the readings' JSON (D45: that JSON was a quarter of influxd's CPU
    per reading for devices signing messages of 10)."""
    fields: dict[str, float | int | bool | str] = {"key_id": str(signed["key_id"]),
                                                   "sig": str(signed["sig"])}
    if kept is not None and signed_rebuildable(signed, kept):
        fields.update(count=len(kept), last_at=_last_at(signed))
    else:
        fields["readings"] = _signed_readings_json(signed)
    return Point(SIGNED_MEASUREMENT, {"device_id": device_id}, fields, signed_at(signed))


def signed_message_line(device_id: str, signed: Mapping[str, Any],
                        kept: Sequence[Mapping[str, Any]] | None = None) -> str:
    """``signed_message_point(device_id, signed, kept).to_line()`` without the Point: the same
    bytes (tests/test_reading_lines.py), by one f-string when the device id needs no escaping
    and the key id and signature no quoting (always, for what the bridge forwards)."""
    head = _SIGNED_HEADS.get(device_id)
    if head is None:
        if type(device_id) is not str or not _PLAIN.fullmatch(device_id):
            return signed_message_point(device_id, signed, kept).to_line()
        if len(_SIGNED_HEADS) >= _HEADS_MAX:
            _SIGNED_HEADS.clear()
        head = _SIGNED_HEADS[device_id] = f"{SIGNED_MEASUREMENT},device_id={device_id} "
    key_id, sig = signed["key_id"], signed["sig"]
    if not (_quotable(key_id) and _quotable(sig)):
        return signed_message_point(device_id, signed, kept).to_line()
    if kept is not None and signed_rebuildable(signed, kept):
        return (f'{head}key_id="{key_id}",sig="{sig}",count={len(kept)}i,'
                f'last_at={_last_at(signed)}i {signed_at(signed)}')
    readings = (_signed_readings_json(signed).replace("\\", "\\\\").replace('"', '\\"')
                .replace("\n", "\\n"))
    return f'{head}key_id="{key_id}",sig="{sig}",readings="{readings}" {signed_at(signed)}'


@dataclass(frozen=True, slots=True)
class SignedSpan:
    """Where a ``signed_messages`` point without ``readings`` finds them: the device's
    ``readings`` points from ``first_ns`` to ``last_ns`` whose ``sig_at`` is ``first_ns``."""

    device_id: str
    first_ns: int
    last_ns: int
    count: int


def signed_span(row: Mapping[str, Any]) -> SignedSpan | None:
    """``None`` if the row holds its readings' JSON (read it with :func:`signed_message_from_row`
    alone), else where to find them; raises StoredReadingError for a point holding neither."""
    if row.get("readings") is not None:
        return None
    first, last, count = _int(row, "time"), _int(row, "last_at"), _int(row, "count")
    if count < 1 or last < first:
        raise StoredReadingError(f"stored signed message has count {count}, last_at {last}")
    return SignedSpan(_str(row, "device_id"), first, last, count)


def signed_message_from_row(row: Mapping[str, Any],
                            points: Iterable[Mapping[str, Any]] | None = None,
                            ) -> dict[str, Any]:
    """``{"key_id", "sig", "readings"}`` of a ``signed_messages`` row; raises StoredReadingError.

    A row without ``readings`` (D45) is rebuilt from ``points``: rows of ``SELECT * FROM
    readings`` (epoch=ns) covering its :func:`signed_span`; the ones naming this message
    (``sig_at``), in time order, must be exactly ``count``, each rebuilt as the device sent it
    (the canonical reading without its salt).  What they hash to is not checked here: the
    caller compares each with the ledger (:func:`signed_message_readings`)."""
    return signed_message_readings(row, points)[0]


def signed_message_readings(row: Mapping[str, Any],
                            points: Iterable[Mapping[str, Any]] | None = None,
                            ) -> tuple[dict[str, Any], list[tuple[StoredReading, bytes]]]:
    """:func:`signed_message_from_row` and the stored readings it was rebuilt from with the leaf
    each hashes to (:func:`stored_leaf`; empty for a row holding its readings' JSON), so a caller
    can check each against the ledger."""
    key_id, sig = _str(row, "key_id"), _str(row, "sig")
    span = signed_span(row)
    if span is None:
        try:
            readings = json.loads(_str(row, "readings"))
        except ValueError as exc:
            raise StoredReadingError(f"stored signed message is not JSON: {exc}") from exc
        if not isinstance(readings, list):
            raise StoredReadingError("stored signed message's readings are not an array")
        return {"key_id": key_id, "sig": sig, "readings": readings}, []
    if points is None:
        raise StoredReadingError("stored signed message holds no readings: rebuild it from "
                                 "its readings' points")
    mine = sorted((p for p in points if p.get("sig_at") == span.first_ns
                   and p.get("device_id") == span.device_id
                   and span.first_ns <= _int(p, "time") <= span.last_ns),
                  key=lambda p: _int(p, "time"))
    stored = [stored_leaf(p) for p in mine]
    if len(stored) != span.count:
        raise StoredReadingError(
            f"the signed message of {span.device_id} at {span.first_ns} had {span.count} "
            f"readings; InfluxDB holds {len(stored)} of them")
    readings = [{k: s.canonical[k] for k in ("device_id", "patient_id", "seq", "ts_us",
                                             "vitals")} for s, _ in stored]
    return {"key_id": key_id, "sig": sig, "readings": readings}, stored


def window_point(header: Mapping[str, Any], log_index: int, status: str = "sealed") -> Point:
    """The ``windows`` point of a sealed window (``log_index`` is the ledger's)."""
    fields: dict[str, float | int | bool | str] = {
        "root": str(header["root"]), "size": int(header["size"]),
        "start_us": int(header["start_us"]), "end_us": int(header["end_us"]),
        "first_offset": int(header["first_offset"]), "last_offset": int(header["last_offset"]),
        "log_index": int(log_index), "status": status,
    }
    return Point(WINDOWS_MEASUREMENT,
                 {"partition": str(header["partition"]), "window_id": str(header["window_id"])},
                 fields, int(header["start_us"]) * 1000)


def _int(row: Mapping[str, Any], name: str) -> int:
    value = row.get(name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise StoredReadingError(f"stored reading has no integer {name!r}: {value!r}")
    return value


def _str(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value:
        raise StoredReadingError(f"stored reading has no {name!r}")
    return value


def reading_from_row(row: Mapping[str, Any]) -> StoredReading:
    """Rebuild the canonical reading from one row of ``SELECT * FROM readings`` (epoch=ns).

    The result hashes to the same leaf as the reading that was sealed (JCS writes ``72.0`` and
    ``72`` identically, and the integer vitals are restored as integers anyway).
    """
    seq = _int(row, "seq")
    vitals: dict[str, Any] = {}
    for name in VITAL_FIELDS:
        value = row.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise StoredReadingError(f"stored reading lacks vital {name!r}")
        if name in INTEGER_VITALS:
            if not float(value).is_integer():
                raise StoredReadingError(f"stored vital {name}={value!r} is not an integer")
            vitals[name] = int(value)
        else:
            vitals[name] = float(value)
    canonical = {
        "device_id": _str(row, "device_id"),
        "patient_id": _str(row, "patient_id"),
        "seq": seq,
        "ts_us": ts_us_from_time_ns(_int(row, "time"), seq),
        "vitals": vitals,
        "salt": _str(row, "salt"),
    }
    late = row.get("late")
    sig_at = _int(row, "sig_at") if row.get("sig_at") is not None else None
    leaf = row.get("leaf")  # written before D39 only, and never trusted: see stored_leaf
    return StoredReading(canonical=canonical, leaf_hex=leaf if isinstance(leaf, str) else None,
                         window_id=_str(row, "window_id"), late=late is True,
                         received_us=_int(row, "received_us"), sig_at=sig_at)


class LeafMemo:
    """Leaves already computed, each kept with the exact canonical reading it was computed from.

    A leaf is a pure function of the canonical reading, and the dashboard re-reads the same range
    every few seconds, so verified reads would hash the same readings again and again (the leaf
    is most of a verified read's cost: docs/PERFORMANCE.md).  An entry, keyed by
    ``(device_id, seq)``, is used only if ``repr`` of the canonical reading is identical to the
    one it was computed from: every field, value, type and order, so a point changed in any way
    misses and is hashed afresh.  Only the pure function is remembered; the comparison with the
    ledger is made on every read.  Bounded: past ``capacity`` the oldest entries go first.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._entries: dict[tuple[str, int], tuple[str, bytes]] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def leaf(self, canonical: Mapping[str, Any]) -> bytes:
        key = (canonical["device_id"], canonical["seq"])
        content = repr(canonical)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == content:
            self.hits += 1
            return entry[1]
        self.misses += 1
        leaf = reading_leaf_hash(canonical)
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (content, leaf)
            while len(self._entries) > self.capacity:
                del self._entries[next(iter(self._entries))]
        return leaf


def stored_leaf(row: Mapping[str, Any],
                memo: LeafMemo | None = None) -> tuple[StoredReading, bytes]:
    """The reading a stored point holds and the leaf hash it recomputes to: THE leaf check's input.

    Verified reads (``vitalchain.storage.verified``), the audit and the proof service all compare
    this leaf with the one sealed in the ledger, so "what the point hashes to" has exactly one
    definition.  Any point that cannot be rebuilt or hashed canonically raises
    :class:`StoredReadingError` (never a bare ``ValueError``/``TypeError``), so every caller can
    treat it as a finding rather than a crash.  The ``leaf`` field stored with the point is never
    trusted: it is written by whoever wrote the point.  ``memo`` (verified reads only) skips
    re-hashing a canonical reading identical to one hashed before; see :class:`LeafMemo`.
    """
    try:
        stored = reading_from_row(row)
        leaf = (memo.leaf if memo is not None else reading_leaf_hash)(stored.canonical)
    except StoredReadingError:
        raise
    except (CanonicalError, ValueError, TypeError) as exc:
        raise StoredReadingError(f"stored reading cannot be rebuilt or hashed: {exc}") from exc
    return stored, leaf
