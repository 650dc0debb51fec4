"""D45: a signed message's point leaves out its readings' JSON when the readings points written
with it rebuild the message exactly, and only then.

Pure: which messages qualify (every reading kept, equal in every member but the salt, numbers a
float64 keeps, strictly increasing point times) and that the line is the point's. On a real
InfluxDB: the rebuilt readings verify under the device's signature and are JCS-identical to the
sent ones; a message with a reading not kept keeps its JSON and reads as before; a deleted
reading point makes the rebuild fail loudly; an altered one makes the signature fail. And the
receipt writer groups a record's kept readings by message to decide."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalchain.config import Settings
from vitalchain.core.integrity import canonical_json
from vitalchain.core.integrity.devicekeys import (
    SignatureError,
    check_signature,
    generate_private_key,
    key_id_of,
    load_public_key,
    public_key_bytes,
    sign_message,
    signed_bytes,
)
from vitalchain.core.integrity.leaves import canonical_reading
from vitalchain.ingest.receipts import ReceiptWriter, by_message
from vitalchain.ingest.windowing import WindowReading
from vitalchain.storage.influx import InfluxClient
from vitalchain.storage.readings import (
    SIGNED_MEASUREMENT,
    StoredReadingError,
    point_time_ns,
    reading_lines,
    signed_message_from_row,
    signed_message_line,
    signed_message_point,
    signed_message_readings,
    signed_rebuildable,
    signed_span,
)

SALT_KEY = b"k" * 32
T0 = 1_764_000_000_000_000


def _sent(device: str, n: int, seq0: int = 1, **vitals: Any) -> list[dict[str, Any]]:
    values = {"hr": 72, "spo2": 98, "rr": 14, "temp_c": 36.6, "sys": 120, "dia": 80, **vitals}
    return [{"device_id": device, "patient_id": "pat-1", "seq": seq0 + i,
             "ts_us": T0 + i * 200_000, "vitals": dict(values)} for i in range(n)]


def _message(device: str, sent: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    key = generate_private_key()
    key_id = key_id_of(public_key_bytes(key))
    first = sent[0]
    signed = {"at": [first["ts_us"], first["seq"]], "key_id": key_id,
              "sig": sign_message(key, key_id, sent), "readings": copy.deepcopy(sent)}
    return signed, load_public_key(public_key_bytes(key))


def _kept(sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [canonical_reading(r, SALT_KEY) for r in sent]


def test_every_reading_kept_and_equal_rebuilds() -> None:
    sent = _sent("dev-1", 10)
    signed, _ = _message("dev-1", sent)
    assert signed_rebuildable(signed, _kept(sent))
    # A float temperature sent as an integer, an integer vital sent as 72.0: JCS spells each as
    # the rebuilt value, so these rebuild too.
    odd = _sent("dev-1", 2, temp_c=37, hr=72.0)
    signed, _ = _message("dev-1", odd)
    assert signed_rebuildable(signed, _kept(odd))


def test_the_streams_case_the_same_objects() -> None:
    """The stream's canonical readings reuse the parsed readings' members, which D36's record
    also hands over as the signed readings: checked by identity, with the same verdicts."""
    sent = _sent("dev-1", 10)
    signed, _ = _message("dev-1", sent)
    signed["readings"] = sent
    kept = _kept(sent)
    assert all(c["vitals"] is r["vitals"] for c, r in zip(kept, sent, strict=True))
    assert signed_rebuildable(signed, kept)
    assert not signed_rebuildable(signed, kept[:-1])
    assert not signed_rebuildable(signed, kept[::-1])
    sent[4]["extra"] = 1  # a member the points do not hold
    assert not signed_rebuildable(signed, kept)
    del sent[4]["extra"]
    sent[4]["seq"] = sent[3]["seq"]  # not strictly increasing in time
    assert not signed_rebuildable(signed, kept)


@pytest.mark.parametrize("case", ["missing", "extra", "reordered", "member", "bool", "changed",
                                  "same_time", "at", "empty"])
def test_anything_else_keeps_the_json(case: str) -> None:
    sent = _sent("dev-1", 3)
    signed, _ = _message("dev-1", sent)
    kept = _kept(sent)
    if case == "missing":      # a reading of the message was rejected or a duplicate
        kept = kept[:2]
    elif case == "extra":
        kept = kept + _kept(_sent("dev-1", 1, seq0=9))
    elif case == "reordered":  # sent out of time order: "in time order" would not be its order
        signed["readings"] = signed["readings"][::-1]
        kept = kept[::-1]
        signed["at"] = [kept[0]["ts_us"], kept[0]["seq"]]
    elif case == "member":     # a member the points do not hold
        signed["readings"][1]["note"] = "x"
    elif case == "bool":
        signed["readings"][1]["vitals"]["spo2"] = True
        kept[1]["vitals"]["spo2"] = 1
    elif case == "changed":
        kept[2]["vitals"]["hr"] = 73
    elif case == "same_time":  # two readings on one point time
        for r in (*signed["readings"], *kept):
            r["ts_us"] = T0
        for r in (signed["readings"][1], kept[1]):
            r["seq"] = 1001  # seq 1's sub-microsecond slot: the same point time
    elif case == "at":
        signed["at"] = [T0 + 1, 1]
    elif case == "empty":
        signed["readings"], kept = [], []
    assert not signed_rebuildable(signed, kept)
    line = signed_message_line("dev-1", signed, kept)
    assert ",readings=" in line and ",count=" not in line


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10), st.booleans(), st.integers(0, 2))
def test_line_is_the_points_line(n: int, whole: bool, device_kind: int) -> None:
    device = ("dev-1", "dev 1", 'de"v')[device_kind]
    sent = _sent(device, n)
    signed, _ = _message(device, sent)
    kept = _kept(sent) if whole else _kept(sent)[:-1]
    point = signed_message_point(device, signed, kept)
    assert signed_message_line(device, signed, kept) == point.to_line()
    assert ("readings" not in point.fields) == whole
    if whole:
        assert point.fields["count"] == n
        assert point.fields["last_at"] == point_time_ns(sent[-1]["ts_us"], sent[-1]["seq"])


def test_a_row_without_readings_needs_its_points() -> None:
    row = {"time": T0 * 1000 + 1, "device_id": "dev-1", "key_id": "k", "sig": "s", "count": 2,
           "last_at": T0 * 1000 + 200_000_002}
    assert signed_span(row) is not None
    with pytest.raises(StoredReadingError, match="rebuild it"):
        signed_message_from_row(row)
    with pytest.raises(StoredReadingError):
        signed_span({**row, "count": 0})


def _store(settings: Settings, lines: list[str], q: list[str]) -> list[list[dict[str, Any]]]:
    async def go() -> list[list[dict[str, Any]]]:
        async with InfluxClient(settings) as client:
            if lines:
                await client.write(lines)
            return [await client.query(x) for x in q]
    return asyncio.run(go())


def _rebuild(settings: Settings, device: str, at: int) -> tuple[dict[str, Any], list[Any]]:
    [rows] = _store(settings, [], [f"SELECT * FROM {SIGNED_MEASUREMENT} WHERE "
                                   f"\"device_id\" = '{device}' AND time = {at}"])
    span = signed_span(rows[0])
    points = None
    if span is not None:
        [points] = _store(settings, [], [f"SELECT * FROM readings WHERE \"device_id\" = "
                                         f"'{device}' AND time >= {span.first_ns} AND time <= "
                                         f"{span.last_ns}"])
    return signed_message_readings(rows[0], points)


def _write(settings: Settings, device: str, signed: dict[str, Any],
           kept: list[dict[str, Any]], sig_at: int) -> None:
    lines = [signed_message_line(device, signed, kept), *reading_lines(
        [(c, None, "p0-0", False, c["ts_us"] + 5, sig_at) for c in kept])]
    _store(settings, lines, [])


def test_rebuilt_readings_verify_and_equal_the_sent_ones(isolated: Settings) -> None:
    sent = _sent("dev-a", 10, temp_c=36.7)
    sent[3]["vitals"]["temp_c"] = 37  # an integer temperature, rebuilt as 37.0
    signed, public = _message("dev-a", sent)
    at = point_time_ns(sent[0]["ts_us"], sent[0]["seq"])
    _write(isolated, "dev-a", signed, _kept(sent), at)
    # A neighbouring message of the same device, right after: not mixed in.
    later = _sent("dev-a", 3, seq0=11)
    for r in later:
        r["ts_us"] += 10 * 200_000
    signed2, _ = _message("dev-a", later)
    _write(isolated, "dev-a", signed2, _kept(later),
           point_time_ns(later[0]["ts_us"], later[0]["seq"]))

    message, stored = _rebuild(isolated, "dev-a", at)
    assert len(stored) == 10
    assert canonical_json(message["readings"]) == canonical_json(sent)
    assert signed_bytes(message["key_id"], message["readings"]) == \
        signed_bytes(signed["key_id"], sent)
    check_signature(public, message["key_id"], message["sig"], message["readings"])


def test_a_message_with_a_reading_not_kept_keeps_its_json(isolated: Settings) -> None:
    sent = _sent("dev-b", 3)
    signed, public = _message("dev-b", sent)
    at = point_time_ns(sent[0]["ts_us"], sent[0]["seq"])
    _write(isolated, "dev-b", signed, _kept(sent)[:2], at)  # the third was rejected
    message, stored = _rebuild(isolated, "dev-b", at)
    assert stored == []  # read from the JSON, as before D45
    assert message["readings"] == sent
    check_signature(public, message["key_id"], message["sig"], message["readings"])


def test_a_deleted_or_altered_reading_point_is_caught(isolated: Settings) -> None:
    sent = _sent("dev-c", 4)
    signed, public = _message("dev-c", sent)
    kept = _kept(sent)
    at = point_time_ns(sent[0]["ts_us"], sent[0]["seq"])
    _write(isolated, "dev-c", signed, kept, at)
    # Altered: a rebuilt reading differs from the one signed, so the signature no longer checks.
    forged = copy.deepcopy(kept)
    forged[2]["vitals"]["hr"] = 150
    _store(isolated, reading_lines([(forged[2], None, "p0-0", False, 1, at)]), [])
    message, _ = _rebuild(isolated, "dev-c", at)
    with pytest.raises(SignatureError):
        check_signature(public, message["key_id"], message["sig"], message["readings"])
    # Deleted: the rebuild refuses (fewer points than the message had), never a shorter message.
    t = point_time_ns(sent[1]["ts_us"], sent[1]["seq"])
    _store(isolated, [], [f"DELETE FROM readings WHERE \"device_id\" = 'dev-c' AND time = {t}"])
    with pytest.raises(StoredReadingError, match="had 4 readings; InfluxDB holds 3"):
        _rebuild(isolated, "dev-c", at)


def _window_readings(sent: list[dict[str, Any]], signed: dict[str, Any]) -> list[WindowReading]:
    """A record's kept readings as the windower makes them: the first carries the whole signed
    part, the others ``{"at"}``."""
    return [WindowReading(7, c, b"\0" * 32, False, c["ts_us"] + 5,
                          signed if i == 0 else {"at": signed["at"]})
            for i, c in enumerate(_kept(sent))]


def test_the_receipt_writer_queues_the_message_point_without_json_when_whole() -> None:
    whole, cut = _sent("dev-w", 4), _sent("dev-x", 3)
    signed_whole, _ = _message("dev-w", whole)
    signed_whole["readings"] = whole
    signed_cut, _ = _message("dev-x", cut)
    unsigned = _window_readings(_sent("dev-y", 2), {"at": [0, 0]})
    for r in unsigned:
        r.signed = None
    records = [_window_readings(whole, signed_whole),
               _window_readings(cut, signed_cut)[:2],  # its third reading was not kept
               unsigned]
    assert [len(g) for g in by_message(records[0] + records[1] + records[2]).values()] == [4, 2]

    async def queue() -> list[Any]:
        writer = ReceiptWriter(InfluxClient(Settings()), flush_s=3600)
        try:
            for readings in records:
                writer.add_many(readings, "p0-7")
            return [item for key, _, item in writer._queue if key is None]
        finally:
            await writer.close()

    lines = asyncio.run(queue())
    assert len(lines) == 2
    assert lines[0].startswith("signed_messages,device_id=dev-w ") and ",count=4i," in lines[0]
    assert ",readings=" not in lines[0]
    assert lines[1].startswith("signed_messages,device_id=dev-x ") and ",readings=" in lines[1]
