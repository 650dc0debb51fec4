"""Readings as FHIR R4 vital-signs Observations (searchset Bundles).

One reading gives up to five Observations (heart rate, respiratory rate, body temperature,
oxygen saturation, blood pressure panel), coded in LOINC with UCUM units, as the FHIR vital-signs
profiles ask.  Each carries:

- a deterministic identifier ``urn:vitalchain:<device>:<seq>:<loinc>`` and an id derived from it
  (UUID v5: FHIR ids may not contain the ``_`` that device ids may), so the same reading always
  maps to the same resources;
- ``device`` = ``Device/<device id>``, ``subject`` = ``Patient/<patient id>``;
- an extension pointing at the reading's ``vitalchain-proof/1`` bundle
  (``/audit/proofs/<device>/<seq>``), so a FHIR client can ask for the proof of a value;
- a second extension when the reading arrived late (after its window was cut).
"""

from __future__ import annotations

import uuid
from typing import Any

from vitalchain.core.timeutil import iso_from_us

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs", "display": "Vital Signs"}], "text": "Vital Signs"}
PROOF_EXTENSION = "https://vitalchain.dev/fhir/StructureDefinition/proof-bundle"
LATE_EXTENSION = "https://vitalchain.dev/fhir/StructureDefinition/late-arrival"
_NAMESPACE = uuid.UUID("9a3c1f52-6c0e-4a55-9d8e-6f7e0c2b1a40")

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


def _quantity(value: float, unit: str, display_unit: str) -> dict[str, Any]:
    return {"value": value, "unit": display_unit, "system": UCUM, "code": unit}


def _panel_code(code: str) -> str:
    """The Observation a searched code lands in (SpO2's pulse-ox code, BP components)."""
    if code == PULSE_OX[0]:
        return "2708-6"
    if code in (BP_PARTS[0][0], BP_PARTS[1][0]):
        return BP_PANEL[0]
    return code


def observation(reading: dict[str, Any], code: str, base_url: str) -> dict[str, Any]:
    device, seq, vitals = reading["device_id"], reading["seq"], reading["vitals"]
    identifier = f"urn:vitalchain:{device}:{seq}:{code}"
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(uuid.uuid5(_NAMESPACE, identifier)),
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": identifier}],
        "status": "final",
        "category": [CATEGORY],
        "subject": {"reference": f"Patient/{reading['patient_id']}"},
        "effectiveDateTime": iso_from_us(reading["ts_us"]),
        "device": {"reference": f"Device/{device}"},
        "extension": [{"url": PROOF_EXTENSION,
                       "valueUrl": f"{base_url}/audit/proofs/{device}/{seq}"}],
    }
    if reading.get("late"):
        obs["extension"].append({"url": LATE_EXTENSION, "valueBoolean": True})
    if code == BP_PANEL[0]:
        obs["code"] = {"coding": [{"system": LOINC, "code": code, "display": BP_PANEL[1]}],
                       "text": "Blood pressure"}
        obs["component"] = [
            {"code": {"coding": [{"system": LOINC, "code": c, "display": d}], "text": d},
             "valueQuantity": _quantity(vitals[f], "mm[Hg]", "mmHg")} for c, d, f in BP_PARTS]
        return obs
    display, field, unit, display_unit = SIMPLE[code]
    coding = [{"system": LOINC, "code": code, "display": display}]
    if code == "2708-6":
        coding.append({"system": LOINC, "code": PULSE_OX[0], "display": PULSE_OX[1]})
    obs["code"] = {"coding": coding, "text": display}
    obs["valueQuantity"] = _quantity(vitals[field], unit, display_unit)
    return obs


def observations(reading: dict[str, Any], codes: set[str] | None, base_url: str) -> list[dict[str, Any]]:
    wanted = ("8867-4", "9279-1", "8310-5", "2708-6", BP_PANEL[0])
    chosen = {_panel_code(c) for c in codes} if codes else set(wanted)
    return [observation(reading, c, base_url) for c in wanted if c in chosen]


def searchset(resources: list[dict[str, Any]], self_url: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": self_url}],
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r, "search": {"mode": "match"}}
                  for r in resources],
    }
