"""``vitalchain api``, ``vitalchain users ...`` and ``vitalchain grants ...``.

User and grant changes made here are written to the access log too (method ``CLI``), so the
history of who was given access is as tamper-evident as the history of who used it.
"""

from __future__ import annotations

import getpass

import click

from vitalchain.api.accesslog import record_access
from vitalchain.api.app import api_path
from vitalchain.config import Settings
from vitalchain.core.ids import ROLES, check_id, check_user
from vitalchain.core.timeutil import MAX_ANY_US, iso_from_us, parse_time_us
from vitalchain.storage.apistore import ApiStore, StoreError


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def _record(store: ApiStore, action: str, patient_id: str | None, reason: str) -> None:
    # Only api.sqlite is written here; the running API seals the entry into the ledger.
    record_access(
        store, user=None, role="operator", method="CLI", path=action, query="", patient_id=patient_id,
        allowed=True, status=0, reason=f"{reason} by {_operator()}")


def _check_patient(settings: Settings, patient: str) -> None:
    """Refuse a grant for a patient the registry does not know (``check_known_patient``)."""
    from vitalchain.devices.registry import ProvisioningError, UnknownPatient, check_known_patient, load_registry

    try:
        check_known_patient(load_registry(settings), patient)
    except (ProvisioningError, UnknownPatient) as exc:
        raise click.ClickException(str(exc)) from None


def register(main: click.Group) -> None:
    @main.command("api")
    @click.option("--host", default=None, help="Listen address (default: the settings' host).")
    @click.option("--port", default=None, type=click.IntRange(1, 65535),
                  help="Listen port (default: VITALCHAIN_API_PORT, 8700).")
    @click.option("--seal-seconds", default=5.0, show_default=True, type=click.FloatRange(0.1),
                  help="How often access-log entries are sealed into the ledger.")
    @click.pass_obj
    def api_command(settings: Settings, host: str | None, port: int | None, seal_seconds: float) -> None:
        """Serve the clinician/auditor HTTP API (OpenAPI at /docs)."""
        import uvicorn

        from vitalchain.api.app import create_app
        from vitalchain.api.redact import log_config
        from vitalchain.app.workers import register_worker

        host, port = host or settings.host, port or settings.api_port
        url = f"http://{host}:{port}/"
        click.echo(f"API and dashboard on {url} (OpenAPI: {url}docs); sign in with a token from "
                   "`vitalchain users add NAME --role clinician|auditor`", err=True)
        record = register_worker(settings, "api")
        try:
            # uvicorn's access log prints each request line: redact tokens a client put in the URL.
            uvicorn.run(create_app(settings, seal_seconds=seal_seconds), host=host, port=port,
                        log_level="info", log_config=log_config())
        finally:
            record.remove()

    @main.group("users")
    def users() -> None:
        """API users (bearer tokens)."""

    @users.command("add")
    @click.argument("name")
    @click.option("--role", required=True, type=click.Choice(ROLES))
    @click.pass_obj
    def users_add(settings: Settings, name: str, role: str) -> None:
        """Create a user and print its token (shown once, stored only as a hash)."""
        store = ApiStore(api_path(settings))
        try:
            token = store.add_user(check_user(name), role)
            _record(store, f"users add {name} --role {role}", None, "user created")
        except (StoreError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            store.close()
        click.echo(token)

    @users.command("list")
    @click.pass_obj
    def users_list(settings: Settings) -> None:
        store = ApiStore(api_path(settings))
        for user in store.users():
            click.echo(f"{user.name}\t{user.role}\t{'disabled' if user.disabled else 'active'}")
        store.close()

    @users.command("disable")
    @click.argument("name")
    @click.pass_obj
    def users_disable(settings: Settings, name: str) -> None:
        """Disable a user: its token stops working at once."""
        store = ApiStore(api_path(settings))
        try:
            store.disable_user(name)
            _record(store, f"users disable {name}", None, "user disabled")
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            store.close()

    @main.group("grants")
    def grants() -> None:
        """Patient consent: which clinician may see which patient, until when."""

    @grants.command("add")
    @click.argument("patient")
    @click.argument("clinician")
    @click.option("--until", "until", required=True, help="Expiry, ISO 8601 (UTC if no offset).")
    @click.pass_obj
    def grants_add(settings: Settings, patient: str, clinician: str, until: str) -> None:
        _check_patient(settings, patient)
        store = ApiStore(api_path(settings))
        try:
            grant = store.add_grant(check_id(patient, "patient id"), clinician,
                                    parse_time_us(until, "--until", max_us=MAX_ANY_US, integers=False), _operator())
            _record(store, f"grants add {patient} {clinician}", patient,
                    f"grant until {iso_from_us(grant.until_us)}")
        except (StoreError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            store.close()
        click.echo(f"grant {grant.id}: {patient} -> {clinician} until {iso_from_us(grant.until_us)}")

    @grants.command("revoke")
    @click.argument("patient")
    @click.argument("clinician")
    @click.pass_obj
    def grants_revoke(settings: Settings, patient: str, clinician: str) -> None:
        store = ApiStore(api_path(settings))
        try:
            count = store.revoke(patient, clinician, _operator())
            _record(store, f"grants revoke {patient} {clinician}", patient, "grant revoked")
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            store.close()
        click.echo(f"revoked {count} grant(s) of {patient} to {clinician}")

    @grants.command("list")
    @click.option("--patient", default=None)
    @click.option("--clinician", default=None)
    @click.pass_obj
    def grants_list(settings: Settings, patient: str | None, clinician: str | None) -> None:
        store = ApiStore(api_path(settings))
        for g in store.grants(patient, clinician):
            d = g.to_dict()
            state = "active" if d["active"] else ("revoked" if d["revoked"] else "expired")
            click.echo(f"{g.id}\t{g.patient_id}\t{g.clinician}\tuntil {d['until']}\t{state}")
        store.close()
