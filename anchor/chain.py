"""The Ethereum side: node connection, the anchoring key, the contract, EIP-1559 fees.

Kept apart from the worker so that deploy, the worker and the proof service share one idea of
"which key" and "which contract", and so production can never silently anchor with anvil's
publicly known development key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3
from web3._utils.empty import empty as EMPTY
from web3.contract import Contract

from vitalchain.anchor.compile import load_artifact
from vitalchain.config import DEV_ANCHOR_PRIVATE_KEY, Settings
from vitalchain.core.verify.anchor import ANCHORED_SIGNATURE, ANCHORED_TOPIC  # noqa: F401 (part of this API)
from vitalchain.errors import InvalidInput, Unavailable

_KEY = re.compile(r"(0x)?[0-9a-fA-F]{64}")

# Fee policy: max fee = 2 x base fee + tip survives six full blocks of +12.5% base fee growth.
BASE_FEE_MULTIPLIER = 2
DEFAULT_TIP_WEI = 1_000_000_000
GAS_MARGIN = 1.25  # estimate_gas is exact for this contract, but state can change before mining
REPLACEMENT_BUMP = 1.25  # nodes require >= +10% on both fee fields to replace a pending tx


class AnchorKeyError(InvalidInput):
    """The anchoring key is missing, unreadable, malformed, or the dev key in production."""


class ChainError(Unavailable):
    """The node is unreachable or the contract is not where the settings say."""


def load_private_key(settings: Settings) -> str:
    """The anchoring key: from ``anchor_private_key_file``, or anvil's account 0 in dev mode.

    Production refuses both a missing key file and the development key (it is public).
    """
    path = settings.anchor_private_key_file
    if not path:
        if settings.mode == "production":
            raise AnchorKeyError(
                "production mode needs VITALCHAIN_ANCHOR_PRIVATE_KEY_FILE (a file holding the "
                "anchoring account's private key); the development key is public and refused")
        return DEV_ANCHOR_PRIVATE_KEY
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise AnchorKeyError(f"cannot read anchoring key file {path}: {exc.strerror}") from exc
    if not _KEY.fullmatch(text):
        raise AnchorKeyError(f"anchoring key file {path} must hold 64 hex characters (0x optional)")
    key = "0x" + text.removeprefix("0x").lower()
    if settings.mode == "production" and key == DEV_ANCHOR_PRIVATE_KEY:
        raise AnchorKeyError(f"{path} holds anvil's public development key; production refuses it")
    return key


def anchor_account(settings: Settings) -> LocalAccount:
    return Account.from_key(load_private_key(settings))


def connect(settings: Settings, timeout: float = 5.0, retry: bool = True) -> Web3:
    """A web3 client for ``settings.eth_rpc_url``; does not contact the node yet.

    ``retry=False`` fails fast when the node is down (the worker has its own retry loop and
    must keep recording checkpoints meanwhile, not sit in web3's backoff).
    """
    provider = HTTPProvider(settings.eth_rpc_url, request_kwargs={"timeout": timeout},
                            exception_retry_configuration=None if not retry else EMPTY)
    return Web3(provider)


def check_chain(w3: Web3, settings: Settings) -> None:
    """Fail clearly if the node is down or on the wrong chain."""
    try:
        chain_id = w3.eth.chain_id
    except Exception as exc:
        raise ChainError(f"Ethereum node at {settings.eth_rpc_url} unreachable: {exc}") from exc
    if chain_id != settings.eth_chain_id:
        raise ChainError(f"node at {settings.eth_rpc_url} is chain {chain_id}, settings say "
                         f"{settings.eth_chain_id}")


def contract_address(settings: Settings) -> str:
    if not settings.anchor_contract:
        raise ChainError("no anchor contract configured: run `vitalchain anchor deploy` first")
    if not Web3.is_address(settings.anchor_contract):
        raise ChainError(f"VITALCHAIN_ANCHOR_CONTRACT={settings.anchor_contract!r} is not an "
                         "address")
    return Web3.to_checksum_address(settings.anchor_contract)


def anchor_contract(w3: Web3, address: str) -> Contract:
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_artifact()["abi"])


def code_matches(w3: Web3, address: str) -> bool:
    """Whether ``address`` holds exactly the committed VitalAnchor runtime code."""
    code = bytes(w3.eth.get_code(Web3.to_checksum_address(address)))
    return code == bytes.fromhex(load_artifact()["deployedBytecode"].removeprefix("0x"))


@dataclass(frozen=True)
class Fees:
    max_fee: int
    priority_fee: int

    def bumped(self, other: Fees | None = None) -> Fees:
        """Fees high enough to replace a pending tx that used ``self`` (and at least ``other``)."""
        tip = int(self.priority_fee * REPLACEMENT_BUMP) + 1
        cap = int(self.max_fee * REPLACEMENT_BUMP) + 1
        if other is not None:
            tip, cap = max(tip, other.priority_fee), max(cap, other.max_fee)
        return Fees(max_fee=max(cap, tip), priority_fee=tip)


def fee_quote(w3: Web3) -> tuple[int, int]:
    """(latest base fee, the node's suggested tip) in wei."""
    base = int(w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
    try:
        tip = int(w3.eth.max_priority_fee)
    except Exception:
        tip = DEFAULT_TIP_WEI
    return base, max(tip, 1)


def current_fees(w3: Web3) -> Fees:
    """EIP-1559 fees from the latest base fee and the node's suggested tip (no cap)."""
    base, tip = fee_quote(w3)
    return Fees(max_fee=BASE_FEE_MULTIPLIER * base + tip, priority_fee=tip)


def root_bytes(root_hex: str) -> bytes:
    data = bytes.fromhex(root_hex.removeprefix("0x"))
    if len(data) != 32:
        raise ValueError(f"a checkpoint root is 32 bytes, got {len(data)}")
    return data


def anchored_log_in_receipt(receipt: Any, contract: str, root_hex: str) -> dict[str, Any] | None:
    """The receipt's ``Anchored(root, size)`` log from ``contract`` for ``root_hex``, or None.

    The one match of the event in a receipt (the worker's and the audit's; the verifier matches
    the node's raw JSON the same way in vitalchain.core.verify.anchor)."""
    want = root_hex.removeprefix("0x").lower()
    for entry in receipt.get("logs", []):
        topics = [bytes(t).hex() for t in entry["topics"]]
        if (entry["address"].lower() == contract.lower() and len(topics) == 2
                and "0x" + topics[0] == ANCHORED_TOPIC and topics[1] == want and not entry.get("removed")):
            return dict(entry)
    return None


def anchored_event(w3: Web3, address: str, root_hex: str, from_block: int = 0) -> dict[str, Any] | None:
    """The ``Anchored`` log for ``root`` emitted by the contract, or None."""
    logs = w3.eth.get_logs({
        "address": Web3.to_checksum_address(address),
        "fromBlock": from_block, "toBlock": "latest",
        "topics": [ANCHORED_TOPIC, "0x" + root_bytes(root_hex).hex()],
    })
    live = [lg for lg in logs if not lg.get("removed")]
    return dict(live[0]) if live else None
