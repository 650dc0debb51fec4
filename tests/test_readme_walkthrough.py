"""README.md's walkthrough runs as written, top to bottom, like a new user's first hour.

The test takes README's ```sh blocks (the stack, the pipeline by hand, clinicians and auditors) and
runs them in one bash with ``set -e``, so any command that fails fails the test. README uses the
default state folder and ports; the test runs its own copy with ``VITALCHAIN_STATE_DIR`` and the
port variables pointing at free ports (and the two URLs in the commands rewritten to them), in a
folder of its own holding only a link to this checkout's ``.venv``, with no vitalchain on PATH: the
walkthrough must put it there itself. Afterwards nothing of that state folder may still run.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from vitalchain.app.stack.ports import free_ports
from vitalchain.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# README's sh blocks, by the heading they sit under: the ones the walkthrough runs, in order, and
# the one it cannot (make demo / make test start a stack on the default ports, or the whole suite).
RUN = ("The local stack", "Running the pipeline by hand", "Clinicians and auditors: the first hour")
NOT_RUN = ("vitalchain",)


def sh_blocks(text: str) -> list[tuple[str, str]]:
    """(heading, body) of every ```sh block."""
    blocks, heading = [], ""
    for match in re.finditer(r"^(#+) ([^\n]+)$|^```sh\n(.*?)^```$", text, re.M | re.S):
        if match.group(1):
            heading = match.group(2).strip()
        else:
            blocks.append((heading, match.group(3)))
    return blocks


def test_every_sh_block_is_run_or_named_as_not_runnable() -> None:
    headings = [heading for heading, _ in sh_blocks(README.read_text())]
    assert sorted(headings) == sorted([*RUN, *NOT_RUN]), headings


def test_readme_urls_use_the_default_ports_the_test_rewrites() -> None:
    defaults = {f.name: f.default for f in fields(Settings)}
    assert (defaults["eth_port"], defaults["api_port"]) == (8545, 8700)
    script = "".join(body for heading, body in sh_blocks(README.read_text()) if heading in RUN)
    ports = set(re.findall(r"127\.0\.0\.1:(\d+)", script))
    assert ports == {"8545", "8700"}, ports


def _processes_of(state_dir: Path) -> list[str]:
    """Processes whose environment or command line names ``state_dir``."""
    needle = str(state_dir).encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in environ or needle in cmdline:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid}: {command[:200]}")
    return found


@pytest.mark.e2e
def test_the_walkthrough_runs_as_written(tmp_path: Path) -> None:
    mqtt, kafka, influx, eth, rpc, api = free_ports(6)
    blocks = dict(sh_blocks(README.read_text()))
    script = "\n".join(blocks[heading] for heading in RUN)
    script = script.replace("127.0.0.1:8545", f"127.0.0.1:{eth}").replace("127.0.0.1:8700",
                                                                          f"127.0.0.1:{api}")
    home = tmp_path / "checkout"
    home.mkdir()
    (home / ".venv").symlink_to(ROOT / ".venv")
    state = home / "state"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VITALCHAIN_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                                  if ".venv" not in p)
    env.update({"VITALCHAIN_STATE_DIR": str(state), "VITALCHAIN_MQTT_PORT": str(mqtt),
                "VITALCHAIN_KAFKA_PORT": str(kafka), "VITALCHAIN_INFLUX_PORT": str(influx),
                "VITALCHAIN_ETH_PORT": str(eth), "VITALCHAIN_INFLUX_RPC_PORT": str(rpc),
                "VITALCHAIN_API_PORT": str(api)})
    (home / "walkthrough.sh").write_text("set -e -o pipefail -x\n" + script)
    # Output to files, not pipes: the workers started with `&` inherit them, and a pipe would
    # stay open (and the test wait) for as long as any of them runs.
    out, err = home / "stdout.txt", home / "stderr.txt"
    try:
        with open(out, "w") as stdout, open(err, "w") as stderr:
            code = subprocess.run(["bash", "walkthrough.sh"], cwd=home, env=env, stdout=stdout,
                                  stderr=stderr, stdin=subprocess.DEVNULL, timeout=900).returncode
    finally:
        subprocess.run([str(ROOT / ".venv" / "bin" / "vitalchain"), "stack", "down"], cwd=home,
                       env=env, capture_output=True, timeout=180)
    printed = out.read_text()
    tail = (printed + err.read_text())[-6000:]
    assert code == 0, tail
    assert re.search(r"^proof\.json: VALID", printed, re.M), tail
    assert re.search(r"^c\.json: VALID", printed, re.M), tail
    assert '"status":"valid"' in printed.replace(" ", ""), tail  # the API's verdict
    assert _processes_of(state) == []
