"""The installed distribution exposes exactly one import package: ``vitalchain``.

Builds the wheel from this checkout (no network: the build backend comes from the dev extras) and
installs it, without dependencies, into a fresh virtualenv.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"vitalchain": "vitalchain", "ingest": "vitalchain/ingest", "anchor": "vitalchain/anchor",
           "devices": "vitalchain/devices", "api": "vitalchain/api", "audit": "vitalchain/audit"}


def test_wheel_has_one_top_level_package_and_every_module(tmp_path: Path) -> None:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", ".state", "build", "dist", "*.egg-info", "__pycache__", "artifacts"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("vitalchain-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"vitalchain"}, top
    expected = {f"{FOLDERS[f]}/{p.relative_to(ROOT / f).as_posix()}" for f in FOLDERS
                for p in (ROOT / f).rglob("*.py")}
    assert expected <= set(names), sorted(expected - set(names))
    for data in ("vitalchain/anchor/contract/VitalAnchor.json", "vitalchain/api/static/app.js",
                 "vitalchain/core/payload/reading.schema.json"):
        assert data in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    out = subprocess.run([str(py), "-c", "import vitalchain, vitalchain.errors; from importlib import resources;"
                          "print(vitalchain.__file__);"
                          "print(resources.files('vitalchain.core.payload').joinpath('reading.schema.json').is_file())"],
                         check=True, capture_output=True, text=True, timeout=60, cwd=tmp_path).stdout
    assert str(venv) in out.splitlines()[0] and out.splitlines()[1] == "True", out
