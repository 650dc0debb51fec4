"""Deploy VitalAnchor from the committed artifact and record its address in the settings file.

Idempotent: a contract already at the recorded address with the committed runtime code is kept
(the anchors it holds are the history proofs point at; replacing it by accident would orphan
them), unless ``force`` asks for a new one.
"""

from __future__ import annotations

from dataclasses import dataclass

from web3 import Web3

from vitalchain.anchor import chain
from vitalchain.anchor.compile import load_artifact
from vitalchain.config import Settings, record_setting


@dataclass(frozen=True)
class DeployResult:
    address: str
    deployed: bool  # False: the recorded contract was already there and kept
    tx_hash: str | None = None
    block_number: int | None = None
    gas_used: int | None = None
    message: str = ""


def deploy(settings: Settings, *, force: bool = False, record: bool = True,
           timeout: float = 60.0) -> DeployResult:
    """Deploy (or keep) the anchor contract; returns where it is and whether it is new."""
    w3 = chain.connect(settings)
    chain.check_chain(w3, settings)
    account = chain.anchor_account(settings)
    if settings.anchor_contract and not force:
        address = chain.contract_address(settings)
        if chain.code_matches(w3, address):
            owner = chain.anchor_contract(w3, address).functions.owner().call()
            note = "" if owner == account.address else f" (owner {owner} is not the configured key!)"
            return DeployResult(address, False, message=(
                f"VitalAnchor already deployed at {address} with matching code; nothing to do"
                f"{note} (use --force to deploy a new one)"))
    artifact = load_artifact()
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    fees = chain.current_fees(w3)
    tx = factory.constructor().build_transaction({
        "from": account.address,
        "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        "chainId": settings.eth_chain_id,
        "maxFeePerGas": fees.max_fee,
        "maxPriorityFeePerGas": fees.priority_fee,
    })
    tx["gas"] = int(w3.eth.estimate_gas(tx) * chain.GAS_MARGIN)
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout, poll_latency=0.2)
    if receipt["status"] != 1 or not receipt.get("contractAddress"):
        raise chain.ChainError(f"deployment transaction {tx_hash.to_0x_hex()} failed")
    address = Web3.to_checksum_address(receipt["contractAddress"])
    if record:
        record_setting(settings, "anchor_contract", address)
    return DeployResult(address, True, tx_hash.to_0x_hex(), receipt["blockNumber"],
                        receipt["gasUsed"], f"deployed VitalAnchor at {address}")
