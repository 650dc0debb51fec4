"""One error family for all of vitalchain.

Every exception vitalchain raises on purpose derives from :class:`VitalchainError` through one of a
few kinds, so a caller decides what to do by *type*, never by reading a message: the API maps each
kind to one HTTP status (:data:`HTTP_STATUS`), the CLI to one exit path. The kinds also derive from
the built-in exception a Python caller would expect (``ValueError`` for bad input, ``LookupError``
for something missing, ``ConnectionError`` for an unreachable service), so ``except ValueError``
keeps working where it was written against the old classes.

Part of the core layer: no I/O, imports nothing of vitalchain.
"""

from __future__ import annotations


class VitalchainError(Exception):
    """Base of every error vitalchain raises on purpose."""


class InvalidInput(VitalchainError, ValueError):
    """Input from a user, a device or a setting that vitalchain cannot use; the message says why."""


class NotFound(VitalchainError, LookupError):
    """What was asked for does not exist (or is not sealed yet)."""


class Unavailable(VitalchainError, ConnectionError):
    """A service vitalchain depends on (InfluxDB, Kafka, MQTT, the chain, a store) cannot be reached."""


class Altered(VitalchainError):
    """Stored data disagrees with what was sealed: the evidence of tampering, never retried away."""


class Refused(VitalchainError):
    """An operation is refused by a rule: fencing, a lock held by another worker, a conflict."""


# The API's status for each kind (most specific first; ``status_for`` walks the MRO).
HTTP_STATUS: dict[type[VitalchainError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    Altered: 409,
    Refused: 409,
    Unavailable: 503,
    VitalchainError: 500,
}


def status_for(exc: VitalchainError) -> int:
    """The HTTP status of ``exc``'s kind."""
    for klass in type(exc).__mro__:
        if klass in HTTP_STATUS:
            return HTTP_STATUS[klass]
    return 500
