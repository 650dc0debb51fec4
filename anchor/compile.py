"""Compile ``VitalAnchor.sol`` with the pinned solc and (re)write ``VitalAnchor.json``.

The compiled artifact is committed, so deploying never needs a compiler; this module exists so
anyone can check that the committed bytecode really is what the committed source compiles to
(``vitalchain anchor compile --check``, and ``tests/test_contract.py``).  That only works if the
build is reproducible, hence: a fixed compiler version, fixed optimizer runs and EVM version,
and no metadata hash/CBOR tail (which would embed the source's IPFS hash and compiler build).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from vitalchain.errors import VitalchainError

CONTRACT_DIR = Path(__file__).resolve().parent / "contract"
SOURCE_PATH = CONTRACT_DIR / "VitalAnchor.sol"
ARTIFACT_PATH = CONTRACT_DIR / "VitalAnchor.json"
SOURCE_NAME = "VitalAnchor.sol"
CONTRACT_NAME = "VitalAnchor"
COMPILER_VERSION = "0.8.37"

# Pinned so that recompiling reproduces the committed bytes exactly.
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "metadata": {"bytecodeHash": "none", "appendCBOR": False},
    "outputSelection": {SOURCE_NAME: {CONTRACT_NAME: ["abi", "evm.bytecode.object",
                                                       "evm.deployedBytecode.object"]}},
}


class CompileError(VitalchainError):
    """solc rejected the source or is not the pinned version."""


def standard_json_input(source: str) -> dict[str, Any]:
    return {"language": "Solidity", "sources": {SOURCE_NAME: {"content": source}},
            "settings": SETTINGS}


def compiler_version(solc: Path) -> str:
    """The version ``solc`` (solcjs, from tools/) reports; the caller finds the binary."""
    out = subprocess.run([str(solc), "--version"], capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    return out


def compile_source(solc: Path, source: str | None = None) -> dict[str, Any]:
    """Compile with ``solc`` and return the artifact (abi, bytecode, deployed bytecode, compiler, settings)."""
    if source is None:
        source = SOURCE_PATH.read_text()
    version = compiler_version(solc)
    if not version.startswith(COMPILER_VERSION + "+"):
        raise CompileError(f"solcjs is {version}, the contract is pinned to {COMPILER_VERSION}")
    proc = subprocess.run([str(solc), "--standard-json"],
                          input=json.dumps(standard_json_input(source)), capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise CompileError(f"solcjs failed ({proc.returncode}): {proc.stderr.strip()}")
    # solcjs may print a warning line before the JSON document.
    text = proc.stdout[proc.stdout.index("{"):]
    output = json.loads(text)
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    contract = output["contracts"][SOURCE_NAME][CONTRACT_NAME]
    return {
        "contractName": CONTRACT_NAME,
        "sourceName": SOURCE_NAME,
        "compiler": version,
        "settings": {k: v for k, v in SETTINGS.items() if k != "outputSelection"},
        "abi": contract["abi"],
        "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + contract["evm"]["deployedBytecode"]["object"],
    }


def load_artifact(path: Path = ARTIFACT_PATH) -> dict[str, Any]:
    """The committed artifact (what deploy uses)."""
    return dict(json.loads(path.read_text()))


def write_artifact(artifact: dict[str, Any], path: Path = ARTIFACT_PATH) -> None:
    path.write_text(json.dumps(artifact, indent=2, sort_keys=True) + "\n")


def matches_committed(artifact: dict[str, Any]) -> bool:
    """Whether ``artifact`` has the committed ABI, bytecode and compiler."""
    committed = load_artifact()
    return all(committed.get(k) == artifact[k] for k in ("abi", "bytecode", "deployedBytecode", "compiler"))
