#!/usr/bin/env bash
# The unit tests: everything not marked `integration`, with no service running and none reachable.
# Where this machine allows it (Linux, root or user namespaces), the tests run in a network namespace
# of their own with only a loopback interface, so no service started elsewhere can answer them;
# VITALCHAIN_TEST_FAST=1 makes starting a local stack fail loudly (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export VITALCHAIN_TEST_FAST=1
pytest=(.venv/bin/pytest -p no:cacheprovider -q -m "not integration" "$@")
if unshare -n true 2>/dev/null; then
  exec unshare -n -- bash -c 'ip link set lo up 2>/dev/null || true; exec "$@"' _ "${pytest[@]}"
elif unshare -rn true 2>/dev/null; then
  exec unshare -rn -- bash -c 'ip link set lo up 2>/dev/null || true; exec "$@"' _ "${pytest[@]}"
else
  echo "[test-fast] no network namespace here: running without one" >&2
  exec "${pytest[@]}"
fi
