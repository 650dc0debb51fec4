"""The layout is what docs/ARCHITECTURE.md says: one import namespace, four layers, arrows one way.

Reads every module's imports (top-level and function-level, relative ones resolved) with ``ast``,
so a lazy import inside a function cannot sneak an upward arrow past the check.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folder -> the package it is installed as (pyproject.toml's package-dir).
PACKAGE_DIRS = {"vitalchain": "vitalchain", "ingest": "vitalchain.ingest", "anchor": "vitalchain.anchor",
                "devices": "vitalchain.devices", "api": "vitalchain.api", "audit": "vitalchain.audit"}
SERVICES = ("ingest", "anchor", "devices", "api", "audit")
LAYERS = ("core", "storage", "services", "app")
# Libraries that talk to the outside world: the core imports none of them.
IO_LIBRARIES = ("sqlite3", "socket", "httpx", "web3", "paho", "kafka", "aiokafka", "faust", "fastapi",
                "uvicorn", "subprocess", "requests", "psycopg", "starlette", "urllib.request")


def layer_of(module: str) -> str | None:
    """The layer of a ``vitalchain`` module, or None for anything else."""
    parts = module.split(".")
    if parts[0] != "vitalchain":
        return None
    if len(parts) == 1 or parts[1] in ("core", "errors"):
        return "core"
    if parts[1] in ("storage", "config"):  # config reads the environment and <state>/settings.env
        return "storage"
    if parts[1] in SERVICES:
        return "services"
    if parts[1] in ("app", "__main__"):
        return "app"
    raise AssertionError(f"{module} is in no layer: add it to docs/ARCHITECTURE.md and this test")


def modules() -> Iterator[tuple[str, Path]]:
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:  # `from vitalchain.app import stack` imports a module too
                yield f"{target}.{alias.name}", node.lineno


ALL = list(modules())


def test_every_module_is_in_a_layer() -> None:
    assert len(ALL) > 90
    assert {layer_of(name) for name, _ in ALL} == set(LAYERS)


@pytest.mark.parametrize("module,path", ALL, ids=[m for m, _ in ALL])
def test_arrows_point_one_way(module: str, path: Path) -> None:
    mine = LAYERS.index(layer_of(module) or "")
    upward = []
    for target, line in imports(module, path):
        layer = layer_of(target)
        if layer is not None and LAYERS.index(layer) > mine:
            upward.append(f"{path.relative_to(ROOT)}:{line} {module} ({LAYERS[mine]}) imports {target} ({layer})")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("module,path", [(m, p) for m, p in ALL if layer_of(m) == "core"],
                         ids=[m for m, _ in ALL if layer_of(m) == "core"])
def test_core_does_no_io(module: str, path: Path) -> None:
    found = [f"{path.relative_to(ROOT)}:{line} imports {target}" for target, line in imports(module, path)
             if target.split(".")[0] in IO_LIBRARIES or target in IO_LIBRARIES]
    assert not found, "\n".join(found)


FILE_CALLS = {"open", "read_text", "write_text", "read_bytes", "write_bytes", "mkdir", "unlink", "fdopen"}


@pytest.mark.parametrize("module,path", [(m, p) for m, p in ALL if layer_of(m) == "core"],
                         ids=[m for m, _ in ALL if layer_of(m) == "core"])
def test_core_touches_no_files(module: str, path: Path) -> None:
    calls = [f"{path.relative_to(ROOT)}:{node.lineno} {name}()" for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call)
             and (name := getattr(node.func, "attr", getattr(node.func, "id", None))) in FILE_CALLS]
    assert not calls, "\n".join(calls)


def test_nothing_imports_the_folders_by_their_bare_names() -> None:
    """``ingest`` and friends exist only as ``vitalchain.ingest``: a bare import would load a second copy."""
    files = [p for _, p in ALL] + sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    bare = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bare += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in SERVICES]
    assert not bare, "\n".join(bare)
