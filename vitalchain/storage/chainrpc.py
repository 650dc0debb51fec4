"""JSON-RPC to an Ethereum node over HTTP, for the verifier's on-chain steps.

Uses web3's ``HTTPProvider`` only as a transport (``make_request``), so results are the node's raw
hex and nothing depends on web3's result formatters.
"""

from __future__ import annotations

from typing import Any

from web3 import HTTPProvider

from vitalchain.core.verify.rpc import RpcError


class JsonRpc:
    """A :class:`~vitalchain.core.verify.rpc.ChainRpc` for the node at ``url``."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.endpoint = url
        self.provider = HTTPProvider(url, request_kwargs={"timeout": timeout})

    def call(self, method: str, params: list[Any]) -> Any:
        try:
            response = self.provider.make_request(method, params)  # type: ignore[arg-type]
        except Exception as exc:  # connection refused, timeout, bad HTTP status
            raise RpcError(f"{method}: {exc}") from exc
        if "error" in response:
            raise RpcError(f"{method}: {response['error']}")
        return response.get("result")
