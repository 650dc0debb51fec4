"""VitalAnchor on a real anvil node: reproducible build, deploy, owner-only, idempotent anchors."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractCustomError

from vitalchain.anchor import chain
from vitalchain.anchor.compile import compile_source, load_artifact
from vitalchain.anchor.deploy import deploy
from vitalchain.app.stack import tools
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import DEV_ANCHOR_PRIVATE_KEY, Settings, load_settings, read_settings_file

# A fresh account (funded per test with anvil_setBalance): not the owner.
OTHER_KEY = "0x" + "5a" * 32


def test_committed_bytecode_matches_recompiled_source() -> None:
    committed = load_artifact()
    fresh = compile_source(tools.solcjs())
    assert fresh["compiler"].startswith("0.8.37+")
    assert fresh["bytecode"] == committed["bytecode"]
    assert fresh["deployedBytecode"] == committed["deployedBytecode"]
    assert fresh["abi"] == committed["abi"]
    assert committed["settings"]["metadata"] == {"bytecodeHash": "none", "appendCBOR": False}


def test_a_changed_source_compiles_to_other_bytes() -> None:
    source = (Path(__file__).parents[1] / "anchor/contract/VitalAnchor.sol").read_text()
    changed = compile_source(tools.solcjs(), source.replace("if (size <= latestSize)", "if (size < latestSize)"))
    assert changed["deployedBytecode"] != load_artifact()["deployedBytecode"]


@pytest.fixture
def eth(fresh_stack, tmp_path: Path) -> Settings:
    running: Stack = fresh_stack(("anvil",))
    settings = running.settings.with_overrides(state_dir=tmp_path)
    w3 = chain.connect(settings)
    w3.provider.make_request("anvil_setBalance",
                             [Account.from_key(OTHER_KEY).address, hex(10**20)])
    return settings


def _send(w3: Web3, key: str, fn) -> dict:
    account = Account.from_key(key)
    tx = fn.build_transaction({"from": account.address,
                               "nonce": w3.eth.get_transaction_count(account.address, "pending"),
                               "gas": 200_000})
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    return dict(w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.1))


def test_deploy_is_idempotent_and_recorded(eth: Settings) -> None:
    first = deploy(eth)
    assert first.deployed and Web3.is_checksum_address(first.address)
    recorded = read_settings_file(eth.state_dir / "settings.env")
    assert recorded["VITALCHAIN_ANCHOR_CONTRACT"] == first.address
    reloaded = load_settings(environ={}, state_dir=eth.state_dir, eth_port=eth.eth_port)
    assert reloaded.anchor_contract == first.address
    again = deploy(reloaded)
    assert not again.deployed and again.address == first.address
    assert "already deployed" in again.message
    forced = deploy(reloaded, force=True)
    assert forced.deployed and forced.address != first.address
    w3 = chain.connect(eth)
    assert chain.code_matches(w3, forced.address)
    assert not chain.code_matches(w3, Account.from_key(OTHER_KEY).address)


def test_only_owner_anchors_and_same_root_twice_changes_nothing(eth: Settings) -> None:
    address = deploy(eth, record=False).address
    w3 = chain.connect(eth)
    contract = chain.anchor_contract(w3, address)
    owner = Account.from_key(DEV_ANCHOR_PRIVATE_KEY).address
    assert contract.functions.owner().call() == owner
    root = bytes(range(32))

    with pytest.raises(ContractCustomError):
        contract.functions.anchor(root, 5).call({"from": Account.from_key(OTHER_KEY).address})
    reverted = _send(w3, OTHER_KEY, contract.functions.anchor(root, 5))
    assert reverted["status"] == 0 and not reverted["logs"]
    assert contract.functions.latestSize().call() == 0

    receipt = _send(w3, DEV_ANCHOR_PRIVATE_KEY, contract.functions.anchor(root, 5))
    assert receipt["status"] == 1
    (log,) = receipt["logs"]
    assert log["topics"][0].to_0x_hex() == chain.ANCHORED_TOPIC
    assert bytes(log["topics"][1]) == root
    assert int.from_bytes(bytes(log["data"]), "big") == 5
    assert contract.functions.checkpoints(root).call() == [5, receipt["blockNumber"]]

    again = _send(w3, DEV_ANCHOR_PRIVATE_KEY, contract.functions.anchor(root, 5))
    assert again["status"] == 1 and again["logs"] == []
    assert contract.functions.checkpoints(root).call() == [5, receipt["blockNumber"]]
    events = w3.eth.get_logs({"address": address, "fromBlock": 0,
                              "topics": [chain.ANCHORED_TOPIC]})
    assert len(events) == 1

    # The log only grows: same or smaller size with a new root is refused, and so is a known
    # root with another size.
    for other_root, size in ((bytes(32), 5), (bytes(32), 4), (root, 6)):
        with pytest.raises(ContractCustomError):
            contract.functions.anchor(other_root, size).call({"from": owner})
    assert _send(w3, DEV_ANCHOR_PRIVATE_KEY,
                 contract.functions.anchor(bytes(31) + b"\x01", 6))["status"] == 1
    assert contract.functions.latestSize().call() == 6


def test_ownership_transfer(eth: Settings) -> None:
    address = deploy(eth, record=False).address
    w3 = chain.connect(eth)
    contract = chain.anchor_contract(w3, address)
    other = Account.from_key(OTHER_KEY).address
    assert _send(w3, OTHER_KEY, contract.functions.transferOwnership(other))["status"] == 0
    assert _send(w3, DEV_ANCHOR_PRIVATE_KEY,
                 contract.functions.transferOwnership(other))["status"] == 1
    assert contract.functions.owner().call() == other
    assert _send(w3, DEV_ANCHOR_PRIVATE_KEY,
                 contract.functions.anchor(bytes(32), 1))["status"] == 0
    assert _send(w3, OTHER_KEY, contract.functions.anchor(bytes(32), 1))["status"] == 1


def test_production_refuses_the_dev_key(tmp_path: Path) -> None:
    prod = load_settings(environ={}, state_dir=tmp_path, mode="production")
    with pytest.raises(chain.AnchorKeyError, match="production"):
        chain.load_private_key(prod)
    key_file = tmp_path / "anchor.key"
    key_file.write_text(DEV_ANCHOR_PRIVATE_KEY + "\n")
    with pytest.raises(chain.AnchorKeyError, match="development key"):
        chain.load_private_key(prod.with_overrides(anchor_private_key_file=str(key_file)))
    key_file.write_text("not a key")
    with pytest.raises(chain.AnchorKeyError, match="64 hex"):
        chain.load_private_key(prod.with_overrides(anchor_private_key_file=str(key_file)))
    key_file.write_text(OTHER_KEY.removeprefix("0x"))
    assert chain.load_private_key(prod.with_overrides(
        anchor_private_key_file=str(key_file))) == OTHER_KEY
    dev = load_settings(environ={}, state_dir=tmp_path)
    assert chain.load_private_key(dev) == DEV_ANCHOR_PRIVATE_KEY
