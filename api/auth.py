"""Who may do what: bearer-token authentication, role checks, patient consent checks.

Every decision is written into the request's access record (``scope["vitalchain.access"]``),
which :mod:`vitalchain.api.recorder` turns into an access-log entry after the response, so a refusal is
logged with the same reason the caller is told.  Tokens are never recorded or logged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from vitalchain.storage.apistore import ApiStore, User

ACCESS_KEY = "vitalchain.access"


def access_info(request: Request) -> dict[str, Any]:
    info = request.scope.get(ACCESS_KEY)
    if info is None:  # route outside the recorder (should not happen): keep decisions anyway
        info = request.scope[ACCESS_KEY] = {}
    return info


def _store(request: Request) -> ApiStore:
    return request.app.state.ctx.store


def deny(request: Request, status: int, reason: str, **headers: str) -> HTTPException:
    access_info(request).update(allowed=False, reason=reason)
    return HTTPException(status, reason, headers=headers or None)


def principal(request: Request) -> User:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise deny(request, 401, "authentication required: send Authorization: Bearer <token>",
                   **{"WWW-Authenticate": "Bearer"})
    if scheme.lower() != "bearer" or not token.strip():
        raise deny(request, 401, "malformed Authorization header: expected Bearer <token>",
                   **{"WWW-Authenticate": "Bearer"})
    user = _store(request).authenticate(token.strip())
    if user is None:
        raise deny(request, 401, "invalid, unknown or disabled token",
                   **{"WWW-Authenticate": 'Bearer error="invalid_token"'})
    access_info(request).update(user=user.name, role=user.role)
    return user


def require(*roles: str) -> Callable[..., User]:
    """Dependency: an authenticated user holding one of ``roles`` (403 naming them if not)."""

    def dependency(request: Request, user: Annotated[User, Depends(principal)]) -> User:
        if user.role not in roles:
            raise deny(request, 403, f"role {user.role!r} may not {request.method} "
                       f"{request.url.path}: requires role {' or '.join(roles)}")
        access_info(request).update(allowed=True, reason=f"role {user.role}")
        return user

    return dependency


def check_device(request: Request, user: User, device_id: str, patient_id: str | None) -> None:
    """Consent for a device-scoped route, decided before anything is looked up.

    ``patient_id`` is the device's patient in the device registry (None if the device is not
    registered).  A clinician without an active grant gets one and the same 403 whether or not
    the device, or the reading asked for, exists: the answer reveals nothing (the access log keeps
    the precise reason for auditors).
    """
    info = access_info(request)
    if user.role != "clinician":
        return
    if patient_id is not None:
        info["patient_id"] = patient_id
        allowed, reason = _store(request).access_decision(user.name, patient_id)
    else:
        allowed, reason = False, f"device {device_id} is not in the device registry"
    if not allowed:
        info.update(allowed=False, reason=reason)
        raise HTTPException(403, f"{user.name} holds no active grant covering device {device_id}")
    info.update(allowed=True, reason=reason)


def check_patient(request: Request, user: User, patient_id: str) -> None:
    """A clinician needs an active, unrevoked grant from the patient; auditors/admins pass."""
    info = access_info(request)
    info["patient_id"] = patient_id
    if user.role != "clinician":
        return
    allowed, reason = _store(request).access_decision(user.name, patient_id)
    if not allowed:
        raise deny(request, 403, reason)
    info.update(allowed=True, reason=reason)
