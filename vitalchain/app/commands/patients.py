"""``vitalchain patients list``: the patients of the provisioned devices.

Patients exist in vitalchain only as the patient each device is on (``<state_dir>/devices/
registry.json``); grants and the API name them by these ids, so an operator needs the list to
grant consent without reading the registry file.
"""

from __future__ import annotations

import json

import click

from vitalchain.config import Settings


@click.group("patients")
def patients_group() -> None:
    """Patients: who the provisioned devices are on (grants name these ids)."""


@patients_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: patient id -> device ids.")
@click.pass_obj
def list_command(settings: Settings, as_json: bool) -> None:
    """One line per patient: its id and its devices."""
    from vitalchain.devices.registry import patients, registry_path

    known = patients(settings)
    if as_json:
        click.echo(json.dumps(known, indent=2))
        return
    if not known:
        click.echo(f"no patients: no device is provisioned in {registry_path(settings)} "
                   "(`vitalchain devices provision N`)", err=True)
        return
    for patient_id, devices in known.items():
        shown = ", ".join(devices[:5]) + (f", ... ({len(devices)} devices)" if len(devices) > 5 else "")
        click.echo(f"{patient_id}\t{shown}")


def register(main: click.Group) -> None:
    main.add_command(patients_group)
