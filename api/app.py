"""The FastAPI application: routes for clinicians, auditors and admins (see ``docs/API.md``).

Handlers that touch SQLite or the proof service are plain ``def`` (FastAPI runs them in its
thread pool); handlers that query InfluxDB are ``async`` with a client per request, so the app
works the same under uvicorn and in-process test clients whatever their event loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from vitalchain.anchor.proofs import ProofService, ProofUnavailable
from vitalchain.api import dashboard, fhir, rejected, vitals
from vitalchain.api.accesslog import ACCESS_TOPIC, AccessLog, AccessProofUnavailable, verify_access_proof
from vitalchain.api.auditrun import AuditRange, AuditRunner
from vitalchain.api.auth import check_device, check_patient, require
from vitalchain.api.bodyguard import BodyGuard
from vitalchain.api.ids import ID_REGEX, MAX_ANY_US, MAX_TIME_US, ROLES, USER_REGEX, iso_from_us, parse_time_us
from vitalchain.api.logview import LogAltered, LogView
from vitalchain.api.news2 import news2
from vitalchain.api.recorder import AccessRecorder
from vitalchain.devices.registry import ProvisioningError, load_registry

from vitalchain.config import Settings
from vitalchain.core.verify import verify_bundle
from vitalchain.storage.apistore import ApiStore, StoreError, User, now_us
from vitalchain.storage.influx import InfluxClient, InfluxError
from vitalchain.storage.ledger import Ledger

MAX_BODY_BYTES = 1_000_000
MAX_RANGE_US = 400 * 86400 * 1_000_000
PatientId = Annotated[str, Path(pattern=ID_REGEX, description="patient id")]
DeviceId = Annotated[str, Path(pattern=ID_REGEX, description="device id")]
# Role dependencies at module level: FastAPI resolves these (string) annotations in module globals.
AnyUser = Annotated[User, Depends(require(*ROLES))]
Clinician = Annotated[User, Depends(require("clinician"))]
Auditor = Annotated[User, Depends(require("auditor"))]
Admin = Annotated[User, Depends(require("admin"))]
AuditorOrAdmin = Annotated[User, Depends(require("auditor", "admin"))]
Prover = Annotated[User, Depends(require("auditor", "clinician"))]


def api_path(settings: Settings) -> str:
    return str(settings.state_dir / "api.sqlite")


@dataclass
class ApiContext:
    settings: Settings
    store: ApiStore
    ledger: Ledger
    view: LogView
    access_log: AccessLog
    proofs: ProofService
    proofs_lock: threading.Lock

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.access_log.seal()
        self.proofs.close()
        self.view.close()
        self.ledger.close()
        self.store.close()


def open_context(settings: Settings, store_path: str | None = None) -> ApiContext:
    store = ApiStore(store_path or api_path(settings))
    ledger = Ledger(settings.ledger_path)
    view = LogView(settings, ledger)
    return ApiContext(settings, store, ledger, view, AccessLog(store, ledger, view),
                      ProofService(settings), threading.Lock())


# --- request bodies ---------------------------------------------------------------------------
class NewUser(BaseModel):
    name: str = Field(pattern=USER_REGEX)
    role: str = Field(pattern=f"^({'|'.join(ROLES)})$")


class NewGrant(BaseModel):
    patient_id: str = Field(pattern=ID_REGEX)
    clinician: str = Field(pattern=USER_REGEX)
    until: str = Field(min_length=4, max_length=40, description="ISO 8601 expiry")


class GrantRef(BaseModel):
    patient_id: str = Field(pattern=ID_REGEX)
    clinician: str = Field(pattern=USER_REGEX)


def _time(value: str | None, name: str, max_us: int = MAX_TIME_US) -> int | None:
    """A user's time; query bounds default to what InfluxDB's int64 nanoseconds can hold."""
    if value is None:
        return None
    try:
        return parse_time_us(value, max_us)
    except ValueError as exc:
        raise HTTPException(422, f"{name}: {exc}") from None


def _range(start: str | None, end: str | None) -> tuple[int, int]:
    """``start``/``end`` query values to microseconds: default the last 24 h, at most 400 days."""
    end_us = now_us() if end is None else _time(end, "end")
    start_us = max(0, end_us - 86400 * 1_000_000) if start is None else _time(start, "start")
    assert start_us is not None and end_us is not None
    if not 0 <= end_us - start_us <= MAX_RANGE_US:
        raise HTTPException(422, "need 1970 <= start <= end and a range of at most 400 days")
    return start_us, end_us


def _registry(settings: Settings) -> dict[str, str]:
    """Device id -> patient id, as provisioning wrote it."""
    try:
        return load_registry(settings)
    except ProvisioningError as exc:
        raise HTTPException(503, f"device registry unreadable: {exc}") from None


def _devices_of(settings: Settings, patient_id: str) -> list[str]:
    return sorted(d for d, p in _registry(settings).items() if p == patient_id)


def _ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


def _influx(request: Request) -> InfluxClient:
    return InfluxClient(_ctx(request).settings, retries=1, timeout_s=10.0)


def create_app(settings: Settings, *, seal_seconds: float = 5.0,
               store_path: str | None = None) -> FastAPI:
    """The API over ``settings``' ledger and InfluxDB; users/grants/access in ``api.sqlite``."""
    ctx = open_context(settings, store_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def sealer() -> None:
            while True:
                await asyncio.sleep(seal_seconds)
                with contextlib.suppress(Exception):  # retried next round; entries are kept
                    await asyncio.to_thread(ctx.access_log.seal)

        task = asyncio.create_task(sealer())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.to_thread(ctx.close)

    app = FastAPI(title="vitalchain API", version="1", lifespan=lifespan,
                  description="Clinician and auditor access to provable vital signs. "
                              "Bearer tokens from `vitalchain users add`.")
    app.state.ctx = ctx
    auditor = AuditRunner(settings)
    app.add_middleware(BodyGuard, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(AccessRecorder, access_log=ctx.access_log)  # outermost: sees refusals too

    @app.exception_handler(InfluxError)
    async def influx_down(request: Request, exc: InfluxError) -> JSONResponse:
        return JSONResponse({"detail": f"InfluxDB unavailable: {exc}"}, status_code=503)


    @app.get("/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/me", tags=["meta"])
    def me(*, user: AnyUser) -> dict[str, Any]:
        return user.to_dict()

    # --- clinicians -----------------------------------------------------------------------
    @app.get("/clinician/patients", tags=["clinician"])
    async def my_patients(*, request: Request, user: Clinician) -> dict[str, Any]:
        """Patients who granted the caller access, each with the latest reading and NEWS2."""
        patients = ctx.store.patients_of(user.name)
        out = []
        async with _influx(request) as influx:
            for patient_id, until in patients.items():
                latest = await vitals.latest_reading(influx, patient_id)
                out.append({"patient_id": patient_id, "grant_until": iso_from_us(until),
                            "latest": latest,
                            "latest_time": iso_from_us(latest["ts_us"]) if latest else None,
                            "news2": news2(latest["vitals"]).to_dict() if latest else None})
        return {"clinician": user.name, "patients": out}

    @app.get("/clinician/patients/{patient_id}/vitals", tags=["clinician"])
    async def patient_vitals(*,
        request: Request, patient_id: PatientId,
        start: Annotated[str | None, Query(max_length=40, description="ISO 8601; default end-24h")] = None,
        end: Annotated[str | None, Query(max_length=40, description="ISO 8601; default now")] = None,
        max_points: Annotated[int, Query(ge=10, le=vitals.MAX_POINTS)] = vitals.MAX_POINTS,
        user: Clinician,
    ) -> dict[str, Any]:
        """A patient's vitals over a range, downsampled by InfluxDB to at most ``max_points``."""
        check_patient(request, user, patient_id)
        start_us, end_us = _range(start, end)
        async with _influx(request) as influx:
            series = await vitals.downsampled(influx, patient_id, start_us, end_us, max_points)
        return {"patient_id": patient_id, "start": iso_from_us(start_us),
                "end": iso_from_us(end_us), **series}

    @app.get("/clinician/patients/{patient_id}/rejected", tags=["clinician"])
    async def patient_rejected(*,
        request: Request, patient_id: PatientId,
        start: Annotated[str | None, Query(max_length=40, description="ISO 8601; default end-24h")] = None,
        end: Annotated[str | None, Query(max_length=40, description="ISO 8601; default now")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        user: Clinician,
    ) -> dict[str, Any]:
        """Messages from the patient's devices that the bridge rejected (newest first)."""
        check_patient(request, user, patient_id)
        start_us, end_us = _range(start, end)
        devices = _devices_of(ctx.settings, patient_id)
        async with _influx(request) as influx:
            rows = await rejected.rejected(influx, start_us, end_us, limit, devices=devices)
        return {"patient_id": patient_id, "devices": devices, "start": iso_from_us(start_us),
                "end": iso_from_us(end_us), "rejected": rows}

    @app.get("/fhir/Observation", tags=["fhir"])
    async def fhir_observations(*,
        request: Request,
        patient: Annotated[str, Query(pattern=ID_REGEX)],
        code: Annotated[list[str] | None, Query(max_length=10)] = None,
        date: Annotated[list[str] | None, Query(max_length=2)] = None,
        count: Annotated[int, Query(alias="_count", ge=1, le=1000)] = 100,
        user: Clinician,
    ) -> JSONResponse:
        """FHIR R4 search: vital-signs Observations of one patient (searchset Bundle)."""
        if len(request.query_params.getlist("patient")) != 1:
            # FastAPI keeps only the last of repeated values: refuse rather than guess which.
            raise HTTPException(422, "give exactly one patient parameter")
        check_patient(request, user, patient)
        codes: set[str] = set()
        for item in code or []:
            for token in item.split(","):
                system, _, value = token.rpartition("|")
                if system not in ("", fhir.LOINC) or value not in fhir.SEARCH_CODES:
                    raise HTTPException(422, f"code {token!r} is not a supported LOINC vital sign "
                                        f"({', '.join(fhir.SEARCH_CODES)})")
                codes.add(value)
        start_us = end_us = None
        for item in date or []:
            prefix, value = item[:2], item[2:]
            when = _time(value, "date")
            if prefix in ("ge", "gt"):
                start_us = when + (1 if prefix == "gt" else 0) if when is not None else None
            elif prefix in ("le", "lt"):
                end_us = when - (1 if prefix == "lt" else 0) if when is not None else None
            else:
                raise HTTPException(422, "date must be ge<ISO8601>, gt..., le... or lt...")
        async with _influx(request) as influx:
            rows = await vitals.readings(influx, patient, start_us, end_us, count)
        base = str(request.base_url).rstrip("/")
        resources = [o for r in rows for o in fhir.observations(r, codes or None, base)]
        return JSONResponse(fhir.searchset(resources, str(request.url)),
                            media_type="application/fhir+json")

    # --- proofs and audits ------------------------------------------------------------------
    @app.get("/audit/proofs/{device_id}/{seq}", tags=["audit"])
    def reading_proof(*, request: Request, device_id: DeviceId,
                      seq: Annotated[int, Path(ge=0, le=2**53 - 1)],
                      user: Prover) -> dict[str, Any]:
        """The ``vitalchain-proof/1`` bundle of one reading (clinicians: granted patients only).

        Consent first: a clinician's grant is checked against the device's patient in the
        registry before the reading is looked up, so 404 (no such reading) is only ever said to
        callers allowed to see the device."""
        if user.role == "clinician":
            check_device(request, user, device_id, _registry(ctx.settings).get(device_id))
        with ctx.proofs_lock:
            try:
                ctx.proofs.locate(device_id, seq)
            except ProofUnavailable as exc:
                raise HTTPException(404, str(exc)) from None
            try:
                result = ctx.proofs.proof(device_id, seq)
            except (ProofUnavailable, ValueError) as exc:
                raise HTTPException(409, str(exc)) from None
        check_patient(request, user, result.bundle["reading"]["patient_id"])
        return result.bundle

    @app.post("/audit/verify", tags=["audit"])
    def verify(*, bundle: Annotated[dict[str, Any], Body()],
               rpc: Annotated[bool, Query(description="check the anchor on the configured chain "
                                                      "(false: hashes only)")] = True,
               user: Prover) -> dict[str, Any]:
        """Verify a bundle: every hash, and its anchor against the configured Ethereum node.

        The server has the chain at hand, so it checks the anchor unless ``rpc=false``; the
        report's ``summary`` names what was checked ("anchor verified on chain (block N)" or
        "anchor not checked"). A bundle with no anchor yet is ``pending``, not a failure.
        Clinicians may verify too: the bundle is the caller's own and the check reveals nothing
        beyond it, so the dashboard can show a clinician the verdict of a proof it downloaded."""
        anchored = isinstance(bundle.get("anchor"), dict)
        report = verify_bundle(bundle, ctx.settings.eth_rpc_url if rpc and anchored else None,
                               source="upload")
        return report.to_dict()

    @app.get("/audit/windows", tags=["audit"])
    def windows(*, start: Annotated[int, Query(ge=0, le=2**53 - 1)] = 0,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                user: Auditor) -> dict[str, Any]:
        """Windows of the log from index ``start``, each with its anchor status."""
        checkpoints = ctx.view.checkpoints()
        size = ctx.ledger.log_size()
        out = []
        for index in range(start, min(size, start + limit)):
            window = ctx.ledger.window_by_index(index)
            if window is None:
                continue
            out.append({"log_index": index, "window_id": window.window_id,
                        "kind": "access" if window.topic == ACCESS_TOPIC else "readings",
                        "topic": window.topic, "header": window.header,
                        "anchor": ctx.view.window_status(index, checkpoints)})
        return {"log_size": size, "windows": out}

    @app.get("/audit/rejected", tags=["audit"])
    async def audit_rejected(*,
        request: Request,
        start: Annotated[str | None, Query(max_length=40, description="ISO 8601; default end-24h")] = None,
        end: Annotated[str | None, Query(max_length=40, description="ISO 8601; default now")] = None,
        device: Annotated[str | None, Query(pattern=ID_REGEX)] = None,
        reason: Annotated[str | None, Query(pattern=r"^[a-z0-9_.-]{1,64}$")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        user: Auditor,
    ) -> dict[str, Any]:
        """Every archived reject (any device, or none known), optionally one device or reason."""
        start_us, end_us = _range(start, end)
        async with _influx(request) as influx:
            rows = await rejected.rejected(influx, start_us, end_us, limit,
                                           devices=[device] if device else None, reason=reason)
        return {"start": iso_from_us(start_us), "end": iso_from_us(end_us), "rejected": rows}

    @app.post("/audit/run", tags=["audit"])
    async def audit_run(*, body: AuditRange, user: AuditorOrAdmin) -> dict[str, Any]:
        """The tamper audit (``vitalchain audit``) over a bounded range; one at a time."""
        return await auditor.run(body)

    @app.get("/audit/checkpoints", tags=["audit"])
    def checkpoints(*, user: Auditor) -> dict[str, Any]:
        return {"contract": ctx.view.contract, "log_size": ctx.ledger.log_size(),
                "checkpoints": [dataclasses.asdict(c) for c in ctx.view.checkpoints()]}

    @app.get("/audit/consistency", tags=["audit"])
    def consistency(*, old: Annotated[int, Query(ge=1, le=2**53 - 1)],
                    new: Annotated[int, Query(ge=1, le=2**53 - 1)],
                    user: Auditor) -> dict[str, Any]:
        """``vitalchain-consistency/1`` proof between two anchored checkpoints."""
        with ctx.proofs_lock:
            try:
                return ctx.proofs.consistency(old, new)
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from None
            except ProofUnavailable as exc:
                raise HTTPException(404, str(exc)) from None

    @app.get("/audit/access", tags=["audit"])
    def access_entries(*, after: Annotated[int, Query(ge=0, le=2**53 - 1)] = 0,
                       limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                       user_name: Annotated[str | None, Query(alias="user", pattern=USER_REGEX)] = None,
                       patient: Annotated[str | None, Query(pattern=ID_REGEX)] = None,
                       user: Auditor) -> dict[str, Any]:
        rows = ctx.store.access_entries(after, limit, user_name, patient)
        return {"entries": [{**r.entry, "window_id": r.window_id} for r in rows]}

    @app.post("/audit/access/seal", tags=["audit"])
    def access_seal(*, user: AuditorOrAdmin) -> dict[str, Any]:
        return {"sealed_windows": ctx.access_log.seal()}

    @app.get("/audit/access/{seq}/proof", tags=["audit"])
    def access_proof(*, seq: Annotated[int, Path(ge=1, le=2**53 - 1)],
                     user: Auditor) -> dict[str, Any]:
        """Proof that access entry ``seq`` is in the (anchored) window log, as stored."""
        try:
            return ctx.access_log.proof(seq)
        except AccessProofUnavailable as exc:
            raise HTTPException(404 if "no access entry" in str(exc) else 409, str(exc)) from None
        except LogAltered as exc:
            raise HTTPException(409, str(exc)) from None

    @app.post("/audit/access/verify", tags=["audit"])
    def access_verify(*, doc: Annotated[dict[str, Any], Body()],
                      user: Auditor) -> dict[str, Any]:
        return verify_access_proof(doc).to_dict()

    # --- admin -----------------------------------------------------------------------------
    @app.get("/admin/users", tags=["admin"])
    def list_users(*, user: Admin) -> dict[str, Any]:
        return {"users": [u.to_dict() for u in ctx.store.users()]}

    @app.post("/admin/users", tags=["admin"], status_code=201)
    def add_user(*, body: NewUser, user: Admin) -> dict[str, Any]:
        """Create a user; the token is in this response only."""
        try:
            token = ctx.store.add_user(body.name, body.role)
        except StoreError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"name": body.name, "role": body.role, "token": token}

    @app.get("/admin/grants", tags=["admin"])
    def list_grants(*, patient: Annotated[str | None, Query(pattern=ID_REGEX)] = None,
                    clinician_name: Annotated[str | None, Query(alias="clinician",
                                                                pattern=USER_REGEX)] = None,
                    user: Admin) -> dict[str, Any]:
        return {"grants": [g.to_dict() for g in ctx.store.grants(patient, clinician_name)]}

    @app.post("/admin/grants", tags=["admin"], status_code=201)
    def add_grant(*, request: Request, body: NewGrant, user: Admin) -> dict[str, Any]:
        until = _time(body.until, "until", MAX_ANY_US)
        assert until is not None
        request.scope["vitalchain.access"]["patient_id"] = body.patient_id
        try:
            return ctx.store.add_grant(body.patient_id, body.clinician, until, user.name).to_dict()
        except StoreError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.post("/admin/grants/revoke", tags=["admin"])
    def revoke_grant(*, request: Request, body: GrantRef, user: Admin) -> dict[str, Any]:
        request.scope["vitalchain.access"]["patient_id"] = body.patient_id
        try:
            return {"revoked": ctx.store.revoke(body.patient_id, body.clinician, user.name)}
        except StoreError as exc:
            raise HTTPException(404, str(exc)) from None

    app.include_router(dashboard.router)  # GET / and /static/...: the browser dashboard
    app.openapi = lambda: describe(app)  # type: ignore[method-assign]
    return app


def describe(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI description, corrected where the generated one says something false.

    A 422 is either FastAPI's own validation error (``detail``: a list of errors) or one of ours
    raised with a message (``detail``: a string); the generated schema only admits the list.
    """
    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, description=app.description,
                           routes=app.routes)
        error = spec.get("components", {}).get("schemas", {}).get("HTTPValidationError")
        if error is not None:
            listed = error["properties"]["detail"]
            error["properties"]["detail"] = {"title": "Detail", "anyOf": [
                {k: v for k, v in listed.items() if k != "title"},
                {"type": "string", "description": "why the request was refused"}]}
        app.openapi_schema = spec
    return app.openapi_schema
