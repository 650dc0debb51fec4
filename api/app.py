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
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from vitalchain.anchor.proofs import ProofService, ProofUnavailable
from vitalchain.api import dashboard, fhir, fhirsearch, rejected, vitals
from vitalchain.api.accesslog import AccessLog, AccessProofUnavailable
from vitalchain.api.auditrun import AuditRange, AuditRunner
from vitalchain.api.auth import access_info, check_device, check_patient, require
from vitalchain.api.bodyguard import BodyGuard
from vitalchain.api.logview import LogAltered, LogView
from vitalchain.api.news2 import news2
from vitalchain.api.recorder import AccessRecorder
from vitalchain.config import Settings
from vitalchain.core.ids import ID_REGEX, ROLES, USER_REGEX
from vitalchain.core.integrity.access import ACCESS_TOPIC
from vitalchain.core.integrity.devicekeys import KEY_TOPIC
from vitalchain.core.timeutil import MAX_ANY_US, MAX_TIME_US, iso_from_us, now_us, parse_time_us
from vitalchain.core.verify import verify_access_proof, verify_bundle
from vitalchain.devices.registry import ProvisioningError, UnknownPatient, check_known_patient, load_registry
from vitalchain.errors import VitalchainError, status_for
from vitalchain.storage.apistore import ApiStore, StoreError, User
from vitalchain.storage.chainrpc import JsonRpc
from vitalchain.storage.influx import InfluxClient, InfluxError
from vitalchain.storage.ledger import Ledger
from vitalchain.storage.readings import LeafMemo
from vitalchain.storage.verified import ReadVerifier

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
    """Where the API's users, grants and access entries live: the ledger's PostgreSQL database
    when there is one (API replicas share no files), else ``<state_dir>/api.sqlite``."""
    return settings.ledger_url or str(settings.state_dir / "api.sqlite")


@dataclass
class ApiContext:
    settings: Settings
    store: ApiStore
    ledger: Ledger
    view: LogView
    access_log: AccessLog
    proofs: ProofService
    proofs_lock: threading.Lock
    # leaves already hashed, shared by all requests (verified reads; see LeafMemo)
    leaf_memo: LeafMemo = dataclasses.field(default_factory=LeafMemo)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.access_log.seal()
        self.proofs.close()
        self.view.close()
        self.ledger.close()
        self.store.close()


def open_context(settings: Settings, store_path: str | None = None) -> ApiContext:
    store = ApiStore(store_path or api_path(settings))
    ledger = Ledger(settings.ledger_target)
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
        return parse_time_us(value, name, max_us=max_us, integers=False)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


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


def _is_fhir(request: Request) -> bool:
    return request.url.path == "/fhir" or request.url.path.startswith("/fhir/")


def _fhir_base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def _fhir_json(body: dict[str, Any], status: int = 200,
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=fhirsearch.FHIR_JSON, headers=headers)


def _error(request: Request, status: int, detail: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    """An error body: ``{"detail"}``, or under /fhir an OperationOutcome."""
    if _is_fhir(request):
        return _fhir_json(fhirsearch.outcome(detail, fhirsearch.issue_code(status)), status, headers)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


def _influx(request: Request) -> InfluxClient:
    return InfluxClient(_ctx(request).settings, retries=1, timeout_s=10.0)


def _verifier(ctx: ApiContext) -> ReadVerifier:
    """Checks each reading against the ledger before it is served (docs/API.md, states).

    If the ledger no longer reproduces the anchored root, no reading is called ``anchored``
    (they can still be ``sealed``: their leaves match the ledger); the audit names the damage.
    """
    try:
        anchored = ctx.view.anchored_size()
    except LogAltered:
        anchored = 0
    return ReadVerifier(ctx.ledger, ctx.settings.raw_topic, anchored, ctx.leaf_memo)


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
        return _error(request, 503, f"InfluxDB unavailable: {exc}")

    @app.exception_handler(VitalchainError)
    async def by_kind(request: Request, exc: VitalchainError) -> JSONResponse:
        """Any vitalchain error a route lets through: its kind decides the status (vitalchain.errors)."""
        return _error(request, status_for(exc), str(exc))

    @app.exception_handler(fhirsearch.SearchError)
    async def fhir_refused(request: Request, exc: fhirsearch.SearchError) -> JSONResponse:
        return _fhir_json(fhirsearch.outcome(exc.diagnostics, exc.code, location=exc.location),
                          exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """Under /fhir every refusal (401, 403, 404, ...) is an OperationOutcome."""
        if _is_fhir(request):
            return _error(request, exc.status_code, str(exc.detail), exc.headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if _is_fhir(request):
            return _error(request, 400, "; ".join(str(e.get("msg")) for e in exc.errors()))
        return await request_validation_exception_handler(request, exc)


    @app.get("/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/me", tags=["meta"])
    def me(*, user: AnyUser) -> dict[str, Any]:
        return user.to_dict()

    # --- clinicians -----------------------------------------------------------------------
    @app.get("/clinician/patients", tags=["clinician"])
    async def my_patients(*, request: Request, user: Clinician) -> dict[str, Any]:
        """Patients who granted the caller access, each with the latest verified reading and NEWS2.

        ``latest`` is the newest servable reading (its ``state`` says received, sealed or
        anchored); newer altered/unknown ones are listed in ``withheld`` and never scored."""
        patients = ctx.store.patients_of(user.name)
        verifier = _verifier(ctx)
        try:
            registry: dict[str, str] | None = load_registry(ctx.settings)
        except ProvisioningError:
            registry = None  # then ``missing_newer`` is null: not checked, not "none missing"
        devices_of: dict[str, list[str]] = {p: [] for p in patients}
        for device, patient in sorted((registry or {}).items()):
            if patient in devices_of:
                devices_of[patient].append(device)
        out = []
        async with _influx(request) as influx:
            # One InfluxDB query and one verify for every patient's newest points, and one
            # worker thread for every device's newest sealed reading (docs/PERFORMANCE.md).
            latest_of = await vitals.latest_readings(influx, verifier, list(patients))
            newest = (await asyncio.to_thread(vitals.newest_sealed_of, ctx.ledger,
                                              [d for ds in devices_of.values() for d in ds])
                      if registry is not None else {})
            for patient_id, until in patients.items():
                found = latest_of[patient_id]
                latest = found["latest"]
                missing = None
                if registry is not None:
                    missing = await vitals.missing_newer(influx, ctx.ledger, devices_of[patient_id],
                                                         latest, newest)
                out.append({"patient_id": patient_id, "grant_until": iso_from_us(until),
                            "latest": latest,
                            "latest_time": iso_from_us(latest["ts_us"]) if latest else None,
                            "news2": news2(latest["vitals"]).to_dict() if latest else None,
                            "withheld": found["withheld"],
                            "withheld_truncated": found["withheld_truncated"],
                            "missing_newer": missing})
        return {"clinician": user.name, "patients": out}

    @app.get("/clinician/patients/{patient_id}/vitals", tags=["clinician"])
    async def patient_vitals(*,
        request: Request, patient_id: PatientId,
        start: Annotated[str | None, Query(max_length=40, description="ISO 8601; default end-24h")] = None,
        end: Annotated[str | None, Query(max_length=40, description="ISO 8601; default now")] = None,
        max_points: Annotated[int, Query(ge=10, le=vitals.MAX_POINTS)] = vitals.MAX_POINTS,
        user: Clinician,
    ) -> dict[str, Any]:
        """A patient's verified vitals over a range, downsampled to at most ``max_points``.

        Every raw reading of the range is verified and only servable ones are averaged
        (altered/unknown ones are counted and listed in ``withheld``); 422 past
        ``MAX_VERIFIED_READINGS`` readings."""
        check_patient(request, user, patient_id)
        start_us, end_us = _range(start, end)
        async with _influx(request) as influx:
            try:
                series = await vitals.downsampled(influx, _verifier(ctx), patient_id, start_us,
                                                  end_us, max_points)
            except vitals.TooManyReadings as exc:
                raise HTTPException(422, str(exc)) from None
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

    # --- FHIR R4 (search logic in api/fhirsearch.py; errors are OperationOutcomes) -------------
    @app.get("/fhir/metadata", tags=["fhir"], responses=fhirsearch.OPENAPI_RESPONSES)
    def fhir_metadata(*, request: Request) -> JSONResponse:
        """The CapabilityStatement: public, as FHIR clients read it before they authenticate."""
        access_info(request).update(allowed=True, reason="public: capability statement")
        return _fhir_json(fhirsearch.capability_statement(_fhir_base(request), app.version))

    @app.get("/fhir/Observation", tags=["fhir"], responses=fhirsearch.OPENAPI_RESPONSES,
             openapi_extra=fhirsearch.OPENAPI_SEARCH)
    async def fhir_observations(*, request: Request, user: Clinician) -> JSONResponse:
        """FHIR R4 search: vital-signs Observations of one patient (paged searchset Bundle).

        Consent is checked for every patient the query names before any reading is looked up."""
        base = _fhir_base(request)
        strict = "handling=strict" in request.headers.get("prefer", "").replace(" ", "")
        search = fhirsearch.parse_search(request.query_params.multi_items(), base, strict)
        for patient_id in search.patients:
            check_patient(request, user, patient_id)
        search.check_one_patient()
        root = str(request.base_url).rstrip("/")
        async with _influx(request) as influx:
            source = (vitals.PatientReadings(influx, _verifier(ctx), search.patient)
                      if search.patient else None)
            page = await fhirsearch.walk(source, search) if source else fhirsearch.empty_page()
            total = fhirsearch.free_total(search, page)
            if total is None and fhirsearch.wants_total(search):
                total = await fhirsearch.total(source, search) if source else 0
        patient = search.patient or ""
        return _fhir_json(fhirsearch.searchset(
            base, search, page,
            lambda reading, code, key: fhir.observation(reading, code, root, patient, key[0]), total))

    @app.get("/fhir/Observation/{resource_id}", tags=["fhir"], responses=fhirsearch.OPENAPI_RESPONSES)
    async def fhir_read(*, request: Request, resource_id: str, user: Clinician) -> JSONResponse:
        """Read one Observation by id, looked for among the caller's granted patients only:
        an Observation of another patient and one that does not exist give the same 404."""
        ref = fhirsearch.check_read_id(resource_id)
        granted = list(ctx.store.patients_of(user.name))
        found = None
        if ref is not None and granted:
            async with _influx(request) as influx:
                found = await vitals.reading_at(influx, _verifier(ctx), granted, ref.time_ns,
                                                lambda d: fhir.device_hash(d) == ref.device_hash)
        if found is None or ref is None:
            raise fhirsearch.SearchError(404, "not-found", f"no Observation/{resource_id} among "
                                         "the patients who granted you access")
        patient_id, reading = found
        check_patient(request, user, patient_id)
        return _fhir_json(fhir.observation(reading, ref.code, str(request.base_url).rstrip("/"),
                                           patient_id, ref.time_ns))

    # --- proofs and audits ------------------------------------------------------------------
    @app.get("/audit/proofs/{device_id}/{seq}", tags=["audit"])
    def reading_proof(*, request: Request, response: Response, device_id: DeviceId,
                      seq: Annotated[int, Path(ge=0, le=2**53 - 1)],
                      user: Prover) -> dict[str, Any]:
        """The ``vitalchain-proof/1`` bundle of one reading (clinicians: granted patients only).

        The body is the bundle itself (what a third party verifies); how far it is anchored is
        in headers: ``X-Vitalchain-Proof-Status`` is ``anchored``, ``pending-confirmation``
        (mined, fewer than the required confirmations: the bundle's anchor stays null until
        then) or ``pending``; ``X-Vitalchain-Confirmations`` is ``n/required`` once mined.

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
        response.headers["X-Vitalchain-Proof-Status"] = result.status
        if result.confirmations is not None:
            response.headers["X-Vitalchain-Confirmations"] = \
                f"{result.confirmations}/{result.confirmations_required}"
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
        report = verify_bundle(bundle, JsonRpc(ctx.settings.eth_rpc_url) if rpc and anchored else None,
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
                        "kind": ("access" if window.topic == ACCESS_TOPIC else
                                 "device-keys" if window.topic == KEY_TOPIC else "readings"),
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
        except (AccessProofUnavailable, LogAltered) as exc:
            raise HTTPException(status_for(exc), str(exc)) from None

    @app.post("/audit/access/verify", tags=["audit"])
    def access_verify(*, doc: Annotated[dict[str, Any], Body()],
                      user: Auditor) -> dict[str, Any]:
        return verify_access_proof(doc, source="upload").to_dict()

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
            check_known_patient(_registry(ctx.settings), body.patient_id)
            return ctx.store.add_grant(body.patient_id, body.clinician, until, user.name).to_dict()
        except (StoreError, UnknownPatient) as exc:
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
