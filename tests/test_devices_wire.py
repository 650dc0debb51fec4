"""A device's template-written payload is byte for byte what the generic encoders write.

The payload contract (docs/DEVICES.md) is the bytes of ``json.dumps`` of the message and an Ed25519
signature over ``JCS({"key_id", "readings"})``. Ed25519 signatures are deterministic (RFC 8032), so
equal signed bytes give an equal payload: comparing whole payloads covers both texts. Readings
range over the schema's whole domain (any id, any safe integer, any float temperature, vitals in
any order) and beyond it, where the writer must step aside to the generic path.
"""

from __future__ import annotations

import json

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from vitalchain.core.integrity.devicekeys import (
    check_signature,
    key_id_of,
    load_public_key,
    private_key_from_seed,
    public_key_bytes,
)
from vitalchain.core.payload.limits import ID_PATTERN, MAX_JSON_INT, MIN_TS_US, VITAL_LIMITS
from vitalchain.devices.keys import SigningKey
from vitalchain.devices.physiology import Patient
from vitalchain.devices.wire import MessageWriter, generic_encode

_PRIVATE = private_key_from_seed(bytes(range(32)))
SIGNING = SigningKey(key_id_of(public_key_bytes(_PRIVATE)), _PRIVATE)
DEVICE, PATIENT = "dev-7", "patient-7"

ids = st.from_regex(ID_PATTERN, fullmatch=True)
numbers = (st.integers(-MAX_JSON_INT - 5, MAX_JSON_INT + 5) | st.floats() | st.booleans()
           | st.none() | st.text(max_size=3))
schema_vitals = st.fixed_dictionaries({
    name: (st.floats(lo, hi, allow_nan=False) | st.integers(int(lo), int(hi))) if name == "temp_c"
    else st.integers(int(lo), int(hi)) for name, (lo, hi) in VITAL_LIMITS.items()})
odd_vitals = (st.permutations(list(VITAL_LIMITS)).flatmap(
    lambda names: st.fixed_dictionaries({n: numbers for n in names}))
    | st.dictionaries(st.sampled_from([*VITAL_LIMITS, "x"]), numbers, max_size=7))


def readings(device: st.SearchStrategy, vitals: st.SearchStrategy, seq: st.SearchStrategy,
             ts: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries({"device_id": device, "patient_id": st.just(PATIENT), "seq": seq,
                                  "ts_us": ts, "vitals": vitals})


valid = readings(st.just(DEVICE), schema_vitals, st.integers(0, MAX_JSON_INT),
                 st.integers(MIN_TS_US, MAX_JSON_INT))
odd = (readings(st.just(DEVICE) | ids, schema_vitals | odd_vitals, numbers, numbers)
       | st.dictionaries(st.sampled_from(["seq", "device_id", "patient_id", "ts_us", "vitals"]),
                         st.just(DEVICE), max_size=5))


@settings(max_examples=400, deadline=None)
@given(st.lists(valid, min_size=1, max_size=10), st.booleans())
def test_the_writer_writes_the_generic_bytes_on_the_whole_schema_domain(batch: list,
                                                                        signed: bool) -> None:
    key = SIGNING if signed else None
    payload = MessageWriter(DEVICE, PATIENT, key).write(batch)
    assert payload == generic_encode(batch, key)
    if signed:  # and the bridge's check accepts it
        message = json.loads(payload)
        check_signature(load_public_key(_PRIVATE.public), SIGNING.key_id, message["sig"], message["readings"])


@settings(max_examples=600, deadline=None)
@given(st.lists(valid | odd, min_size=1, max_size=4), st.booleans())
def test_the_writer_steps_aside_or_agrees_off_the_domain(batch: list, signed: bool) -> None:
    key = SIGNING if signed else None
    try:
        expected = generic_encode(batch, key)
    except (ValueError, TypeError, rfc8785.CanonicalizationError) as exc:  # not encodable at all
        try:
            MessageWriter(DEVICE, PATIENT, key).write(batch)
        except Exception as again:  # the same kind of refusal is what is checked
            assert type(again) is type(exc)
        else:
            raise AssertionError(f"the writer encoded what the generic path refuses ({exc})")
        return
    assert MessageWriter(DEVICE, PATIENT, key).write(batch) == expected


def test_the_simulators_own_readings_take_the_template() -> None:
    """Real firmware readings (physiology, whole-number temperatures included) are in the shape:
    the template path is the one that runs, not the fallback."""
    patient = Patient(PATIENT, seed=3)
    batch = [{"device_id": DEVICE, "patient_id": PATIENT, "seq": i, "ts_us": MIN_TS_US + i,
              "vitals": patient.sample(0.2)} for i in range(2000)]
    writer = MessageWriter(DEVICE, PATIENT, SIGNING)
    assert all(writer._texts(r) is not None for r in batch)
    assert any(r["vitals"]["temp_c"].is_integer() for r in batch)  # "37.0" on the wire, 37 in JCS
    for i in range(0, len(batch), 10):
        assert writer.write(batch[i:i + 10]) == generic_encode(batch[i:i + 10], SIGNING)
