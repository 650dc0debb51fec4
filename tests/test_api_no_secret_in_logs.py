"""No token reaches any log: the API as operators run it (``vitalchain api``, uvicorn's access
log on), requests that put tokens in the URL, then every file the run wrote is searched for every
token issued (log files, the access-log table in api.sqlite, the ledger)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.common_support import wait_until
from vitalchain.app.pipeline import Pipeline
from vitalchain.app.stack.ports import free_port
from vitalchain.app.stack.supervisor import Stack
from vitalchain.config import Settings
from vitalchain.storage.apistore import ApiStore

pytestmark = pytest.mark.e2e


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def test_tokens_in_urls_never_reach_a_log(isolated: Settings, stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    settings = isolated.with_overrides(state_dir=tmp_path, api_port=port)
    store = ApiStore(tmp_path / "api.sqlite")
    tokens = {n: store.add_user(n, r) for n, r in (("root", "admin"), ("alice", "clinician"),
                                                     ("audrey", "auditor"))}
    store.close()
    base = f"http://127.0.0.1:{port}"
    with Pipeline(settings) as pipeline:
        api = pipeline.start("api", None, "--port", str(port), "--seal-seconds", "0.5")

        def up() -> bool:
            pipeline.check_alive()
            try:
                return httpx.get(f"{base}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, 30, "vitalchain api to answer /health", interval=0.2)
        admin = {"Authorization": f"Bearer {tokens['root']}"}
        minted = httpx.post(f"{base}/admin/users", json={"name": "carol", "role": "clinician"},
                            headers=admin, timeout=10).json()["token"]
        tokens["carol"] = minted
        for name, token in tokens.items():
            encoded = token.replace("_", "%5F")
            for url in (f"/me?token={token}", f"/me?access_token={token}&limit=5",
                        f"/me?q={token}", f"/me?q={encoded}", f"/{token}",
                        f"/clinician/patients?api_key={token}"):
                r = httpx.get(base + url, timeout=10)
                assert r.status_code in (401, 404), (url, r.status_code)  # never authenticates
            ok = httpx.get(f"{base}/me?token={token}", headers={"Authorization": f"Bearer {token}"},
                           timeout=10)
            assert ok.status_code == 200 and ok.json()["name"] == name
            bad = httpx.get(f"{base}/me", headers={"Authorization": f"Bearer {token}x"}, timeout=10)
            assert bad.status_code == 401
        # the access log has sealed the entries into the ledger by now
        sealed = httpx.post(f"{base}/audit/access/seal", headers=admin, timeout=10)
        assert sealed.status_code == 200
        pipeline.stop("api")
    log_text = api.log.read_text()
    assert '"GET /me?token=[REDACTED] HTTP/1.1" 401' in log_text, log_text[-2000:]  # it did log

    files = _files(tmp_path, stack.settings.logs_dir)
    assert api.log in files and (tmp_path / "api.sqlite") in files and settings.ledger_path in files
    leaks = [(name, str(path)) for path in files for name, token in tokens.items()
             for needle in (token, token.replace("_", "%5F"), token.split("_", 2)[2])
             if needle.encode() in path.read_bytes()]
    assert not leaks, leaks
