"""One pass per reading in the stream: the raw topic's checks, the salt, the canonical object and
the leaf hash, fused for the reading schema's common case.

``PartitionWindower.offer`` did this in three steps per reading: ``check_reading`` (the bridge's
context-free checks again: the raw topic is not trusted blindly), ``canonical_reading`` (a copy
of the reading plus the salt, the salt's JCS input through the generic template checks) and
``reading_leaf_hash`` (another copy, the JCS template's checks again, then BLAKE3).  Each step
re-tested types and shapes the previous one had just established.  :func:`reading_leaf` tests
them once and writes the salt input and the leaf's JCS text from one template each.

Exactness: the fast path is taken only for a reading that passes every check of
``check_reading`` and whose every value lies in the plain JCS domain (ids matching
``ID_PATTERN`` are plain ASCII; integers within 2**53 - 1; ``temp_c`` within its limits, where
``repr`` is the ES6 number text).  Anything else goes the three-step way, unchanged, so a
refused reading is refused with the same detail as before.  ``tests/test_leafpath.py`` checks,
by hypothesis over valid and invalid readings, that both ways give the same canonical object and
leaf, or the same refusal.
"""

from __future__ import annotations

import re
from typing import Any

import blake3

from vitalchain.core.integrity import canonical_reading, reading_leaf_hash
from vitalchain.core.integrity.hashing import LEAF_PREFIX
from vitalchain.core.integrity.salt import KEY_BYTES, SALT_DOMAIN
from vitalchain.core.payload.limits import ID_PATTERN, MAX_JSON_INT, MIN_TS_US
from vitalchain.core.payload.validation import READING_FIELDS, check_reading, plain_vitals

_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))
_SALT_HEAD = f'["{SALT_DOMAIN}","'
# Ids seen to match ID_PATTERN: a device's readings repeat its device and patient ids, and a set
# lookup is a tenth of the regex's cost.  Bounded: cleared past _PLAIN_IDS_MAX (a new fleet).
_PLAIN_IDS: set[str] = set()
_PLAIN_IDS_MAX = 400_000
# The salt's keyed BLAKE3 state per salt key, copied for each reading: making a keyed hasher
# anew costs more than the hash of the short salt input itself.  One key per process, in
# practice (the stream's); bounded all the same.
_SALT_HASHERS: dict[bytes, Any] = {}


def _plain_id(text: str) -> bool:
    """Whether ``text`` (a str) matches ID_PATTERN; remembered when it does."""
    if _ID.fullmatch(text) is None:
        return False
    if len(_PLAIN_IDS) >= _PLAIN_IDS_MAX:
        _PLAIN_IDS.clear()
    _PLAIN_IDS.add(text)
    return True


def _salt_hasher(salt_key: bytes) -> Any:
    """The keyed BLAKE3 hasher of ``salt_key`` with nothing fed yet (copy it, never update it)."""
    hasher = _SALT_HASHERS.get(salt_key)
    if hasher is None:
        if len(_SALT_HASHERS) >= 16:
            _SALT_HASHERS.clear()
        hasher = _SALT_HASHERS[salt_key] = blake3.blake3(key=salt_key)
    return hasher


def checked_reading(item: Any) -> dict[str, Any]:
    """The bridge's context-free checks of one reading again (the raw topic is not trusted
    blindly); raises ValueError with the check's detail (the dead letter's)."""
    try:
        return check_reading(item)
    except Exception as exc:
        raise ValueError(getattr(exc, "detail", None) or str(exc)) from None


def slow_reading_leaf(item: Any, salt_key: bytes) -> tuple[dict[str, Any], bytes]:
    """The three-step way: checks, canonical object, leaf (raises ValueError, KeyError or
    CanonicalError for what it refuses)."""
    canonical = canonical_reading(checked_reading(item), salt_key)
    return canonical, reading_leaf_hash(canonical)


def reading_leaf(item: Any, salt_key: bytes) -> tuple[dict[str, Any], bytes]:
    """(canonical reading, leaf hash) of one reading of a raw record; the same as
    :func:`slow_reading_leaf`, refusals included, in one pass for the common case."""
    if (type(item) is not dict or item.keys() != READING_FIELDS or type(salt_key) is not bytes
            or len(salt_key) != KEY_BYTES):
        return slow_reading_leaf(item, salt_key)
    device_id, patient_id, seq, ts_us, vitals = (
        item["device_id"], item["patient_id"], item["seq"], item["ts_us"], item["vitals"])
    if (type(device_id) is not str or type(patient_id) is not str or type(seq) is not int
            or type(ts_us) is not int
            or not plain_vitals(vitals) or not 0 <= seq <= MAX_JSON_INT
            or not MIN_TS_US <= ts_us <= MAX_JSON_INT
            or (device_id not in _PLAIN_IDS and not _plain_id(device_id))
            or (patient_id not in _PLAIN_IDS and not _plain_id(patient_id))):
        return slow_reading_leaf(item, salt_key)
    hr, spo2, rr, temp, sys_, dia = (vitals["hr"], vitals["spo2"], vitals["rr"],
                                     vitals["temp_c"], vitals["sys"], vitals["dia"])
    kind = type(temp)
    # temp_c within its limits: an integral value is written as an integer (JCS), any other
    # as Python's shortest repr, which is the ES6 text for magnitudes in [1e-4, 1e16).
    temp_text = str(int(temp)) if kind is int or temp.is_integer() else repr(temp)
    salted = _salt_hasher(salt_key).copy()
    salted.update(f'{_SALT_HEAD}{device_id}",{seq}]'.encode("ascii"))
    salt = salted.digest().hex()  # hexdigest's text, at half its cost (blake3 1.0)
    text = (f'{{"device_id":"{device_id}","patient_id":"{patient_id}","salt":"{salt}",'
            f'"seq":{seq},"ts_us":{ts_us},"vitals":{{"dia":{dia},"hr":{hr},"rr":{rr},'
            f'"spo2":{spo2},"sys":{sys_},"temp_c":{temp_text}}}}}').encode("ascii")
    canonical = {"device_id": device_id, "patient_id": patient_id, "seq": seq, "ts_us": ts_us,
                 "vitals": vitals, "salt": salt}
    return canonical, blake3.blake3(LEAF_PREFIX + text).digest()
