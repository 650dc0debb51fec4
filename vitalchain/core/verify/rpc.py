"""What the verifier needs from an Ethereum node, as an interface the caller implements.

The core layer does no I/O: the on-chain steps ask a :class:`ChainRpc` passed in by the caller.
:class:`vitalchain.storage.chainrpc.JsonRpc` speaks JSON-RPC over HTTP; tests may pass their own.
"""

from __future__ import annotations

from typing import Any, Protocol

from vitalchain.errors import Unavailable


class RpcError(Unavailable):
    """The node could not be reached or answered with a JSON-RPC error."""


class ChainRpc(Protocol):
    """A JSON-RPC endpoint: ``endpoint`` names it in reports, ``call`` raises :class:`RpcError`."""

    endpoint: str

    def call(self, method: str, params: list[Any]) -> Any: ...
