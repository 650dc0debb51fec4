"""Readings as FHIR R4 vital-signs Observations (searchset Bundles).

One reading gives up to five Observations (heart rate, respiratory rate, body temperature,
oxygen saturation, blood pressure panel), coded in LOINC with UCUM units, as the FHIR vital-signs
profiles ask.  Each carries:

- a deterministic identifier ``urn:vitalchain:<device>:<seq>:<loinc>`` and a deterministic id
  ``<InfluxDB time ns>-<16 hex of BLAKE2b(device)>-<loinc>`` (:func:`observation_id`): FHIR ids
  may not hold the ``_`` device ids may, and the id must lead back to the stored point so that
  ``GET /fhir/Observation/{id}`` is one time-indexed lookup;
- ``device`` = ``Device/<device id>``, ``subject`` = ``Patient/<patient id>``;
- its verified-read state (``vitalchain.storage.verified``) as a ``meta.tag`` in
  :data:`INTEGRITY_SYSTEM` and as the FHIR ``status``: ``anchored``/``sealed`` -> ``final``,
  ``received`` -> ``preliminary`` (a note says it is not sealed yet), ``altered``/``unknown`` ->
  ``entered-in-error`` with **no value**: ``dataAbsentReason`` ``error`` on the Observation (and
  on each blood-pressure component) and a note with the reason, so no FHIR client can chart,
  score or alert on a value the ledger does not vouch for;
- for sealed and anchored readings, an extension pointing at the reading's
  ``vitalchain-proof/1`` bundle (``/audit/proofs/<device>/<seq>``), so a FHIR client can ask for
  the proof of a value;
- an extension when the reading arrived late (after its window was cut).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

from vitalchain.core.timeutil import iso_from_us
from vitalchain.storage.verified import ReadState, VerifiedReading

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs", "display": "Vital Signs"}], "text": "Vital Signs"}
PROOF_EXTENSION = "https://vitalchain.dev/fhir/StructureDefinition/proof-bundle"
LATE_EXTENSION = "https://vitalchain.dev/fhir/StructureDefinition/late-arrival"
INTEGRITY_SYSTEM = "https://vitalchain.dev/fhir/CodeSystem/reading-integrity"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
# verified-read state -> (FHIR Observation.status, tag display)
STATES = {
    ReadState.ANCHORED: ("final", "Sealed, leaf matches the ledger, window anchored on chain"),
    ReadState.SEALED: ("final", "Sealed, leaf matches the ledger"),
    ReadState.RECEIVED: ("preliminary", "Received, window still open: not sealed, not verified yet"),
    ReadState.ALTERED: ("entered-in-error", "Stored value differs from the sealed reading"),
    ReadState.UNKNOWN: ("entered-in-error", "Stored reading was never sealed"),
}
ABSENT = {"coding": [{"system": DATA_ABSENT, "code": "error", "display": "Error"}],
          "text": "withheld: the stored value failed verification against the ledger"}

# LOINC code -> (display, vital field, UCUM unit) ; blood pressure is handled as a panel.
SIMPLE = {
    "8867-4": ("Heart rate", "hr", "/min", "beats/minute"),
    "9279-1": ("Respiratory rate", "rr", "/min", "breaths/minute"),
    "8310-5": ("Body temperature", "temp_c", "Cel", "C"),
    "2708-6": ("Oxygen saturation in Arterial blood", "spo2", "%", "%"),
}
PULSE_OX = ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry")
BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")
BP_PARTS = (("8480-6", "Systolic blood pressure", "sys"), ("8462-4", "Diastolic blood pressure", "dia"))
SEARCH_CODES = (*SIMPLE, PULSE_OX[0], BP_PANEL[0], BP_PARTS[0][0], BP_PARTS[1][0])
# The Observations one reading gives, in the order they are served.
KINDS = ("8867-4", "9279-1", "8310-5", "2708-6", BP_PANEL[0])
_OBSERVATION_ID = re.compile(r"(\d{1,19})-([0-9a-f]{16})-(\d{1,5}-\d)")


class ObservationRef(NamedTuple):
    """What an Observation id names: the stored point (time, device hash) and the kind."""

    time_ns: int
    device_hash: str
    code: str


def device_hash(device_id: str) -> str:
    """64 bits of BLAKE2b: device ids may be 64 characters of which FHIR ids allow not all, so
    an id carries this instead; read by id matches it against the devices stored at one instant."""
    return hashlib.blake2b(device_id.encode(), digest_size=8).hexdigest()


def observation_id(time_ns: int, device_id: str, code: str) -> str:
    """The stable id of one Observation (at most 44 characters of ``[0-9a-f-]``)."""
    return f"{time_ns}-{device_hash(device_id)}-{code}"


def parse_observation_id(resource_id: str) -> ObservationRef | None:
    """The parts of an id :func:`observation_id` made, or None if it made no such id."""
    match = _OBSERVATION_ID.fullmatch(resource_id)
    if match is None or match.group(3) not in KINDS or int(match.group(1)) >= 2**63:
        return None
    return ObservationRef(int(match.group(1)), match.group(2), match.group(3))


def _quantity(value: float, unit: str, display_unit: str) -> dict[str, Any]:
    return {"value": value, "unit": display_unit, "system": UCUM, "code": unit}


def panel_code(code: str) -> str:
    """The Observation a searched code lands in (SpO2's pulse-ox code, BP components)."""
    if code == PULSE_OX[0]:
        return "2708-6"
    if code in (BP_PARTS[0][0], BP_PARTS[1][0]):
        return BP_PANEL[0]
    return code


def observation(reading: VerifiedReading, code: str, base_url: str, patient_id: str,
                time_ns: int) -> dict[str, Any]:
    """One Observation of ``reading`` (stored at ``time_ns``, which names it: withheld readings
    may have no readable seq); values only if its state is servable."""
    device, seq = reading.device_id, reading.seq
    status, display = STATES[reading.state]
    identifier = f"urn:vitalchain:{device}:{seq if seq is not None else 'unknown'}:{code}"
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": observation_id(time_ns, device, code),
        "meta": {"tag": [{"system": INTEGRITY_SYSTEM, "code": reading.state.value,
                          "display": display}]},
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": identifier}],
        "status": status,
        "category": [CATEGORY],
        "subject": {"reference": f"Patient/{patient_id}"},
        "device": {"reference": f"Device/{device}"},
    }
    if reading.ts_us is not None:
        obs["effectiveDateTime"] = iso_from_us(reading.ts_us)
    extensions = []
    if reading.state in (ReadState.SEALED, ReadState.ANCHORED):
        extensions.append({"url": PROOF_EXTENSION,
                           "valueUrl": f"{base_url}/audit/proofs/{device}/{seq}"})
    if reading.servable and reading.stored is not None and reading.stored.late:
        extensions.append({"url": LATE_EXTENSION, "valueBoolean": True})
    if extensions:
        obs["extension"] = extensions
    if reading.state is not ReadState.SEALED and reading.state is not ReadState.ANCHORED:
        obs["note"] = [{"text": f"{reading.state.value}: {reading.reason}"}]
    vitals = reading.stored.canonical["vitals"] if reading.servable and reading.stored else None
    if code == BP_PANEL[0]:
        obs["code"] = {"coding": [{"system": LOINC, "code": code, "display": BP_PANEL[1]}],
                       "text": "Blood pressure"}
        obs["component"] = [
            {"code": {"coding": [{"system": LOINC, "code": c, "display": d}], "text": d},
             **({"valueQuantity": _quantity(vitals[f], "mm[Hg]", "mmHg")} if vitals
                else {"dataAbsentReason": ABSENT})} for c, d, f in BP_PARTS]
        return obs
    display_name, field, unit, display_unit = SIMPLE[code]
    coding = [{"system": LOINC, "code": code, "display": display_name}]
    if code == "2708-6":
        coding.append({"system": LOINC, "code": PULSE_OX[0], "display": PULSE_OX[1]})
    obs["code"] = {"coding": coding, "text": display_name}
    if vitals:
        obs["valueQuantity"] = _quantity(vitals[field], unit, display_unit)
    else:
        obs["dataAbsentReason"] = ABSENT
    return obs



