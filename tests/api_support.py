"""Shared set-up for the API's black-box tests: a seeded world served by a real uvicorn.

The schemathesis and access-matrix tests talk HTTP to uvicorn on a free loopback port (in a
thread), not to an in-process client: the app's lifespan runs once, as in production, and the
requests go through the same ASGI stack a browser's would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from tests.common_support import wait_until
from tests.test_api_http import MINUTE_US, seal, vitals_at
from vitalchain.api.app import create_app
from vitalchain.app.stack.ports import free_port
from vitalchain.config import Settings
from vitalchain.storage.apistore import ApiStore
from vitalchain.storage.ledger import Ledger

# name -> role; "dave" is disabled after creation, "bob" has no grant, "alice" has pat-a.
USERS = (("root", "admin"), ("alice", "clinician"), ("bob", "clinician"), ("audrey", "auditor"),
         ("dave", "clinician"))
GRANTED, OTHER = "pat-a", "pat-b"
DEVICES = {"dev-a_1": GRANTED, "dev-b": OTHER}


@dataclass
class Seeded:
    settings: Settings
    store_path: Path
    tokens: dict[str, str]
    now_us: int


def seed(settings: Settings, store_path: Path) -> Seeded:
    """Two patients' readings sealed in ledger + InfluxDB, the registry, users and one grant."""
    now = time.time_ns() // 1000
    with Ledger(settings.ledger_path) as ledger:
        raw = [{"device_id": device, "patient_id": patient, "seq": i,
                "ts_us": now - (10 - i) * MINUTE_US, "vitals": vitals_at(i)}
               for device, patient in DEVICES.items() for i in range(5)]
        seal(settings, ledger, raw, 0, late={2})
    registry = settings.state_dir / "devices" / "registry.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text('{"dev-a_1": "pat-a", "dev-b": "pat-b", "dev-a_2": "pat-a"}\n')
    store = ApiStore(store_path)
    tokens = {name: store.add_user(name, role) for name, role in USERS}
    store.add_grant(GRANTED, "alice", now + 3600 * 1_000_000, "root")
    store.add_grant(GRANTED, "dave", now + 3600 * 1_000_000, "root")
    store.disable_user("dave")
    store.close()
    return Seeded(settings, store_path, tokens, now)


@contextmanager
def served(settings: Settings, store_path: Path, seal_seconds: float = 3600) -> Iterator[str]:
    """Serve the app with uvicorn in a thread; yields its base URL, stops it on exit."""
    port = free_port()
    app = create_app(settings, seal_seconds=seal_seconds, store_path=str(store_path))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(lambda: server.started and up(), 20, "uvicorn to serve /health")
        yield base
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "uvicorn did not stop"
