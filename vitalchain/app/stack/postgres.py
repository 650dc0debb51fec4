"""A private PostgreSQL server for the ledger, when ``VITALCHAIN_LEDGER_URL`` names 127.0.0.1.

Debian's ``postgresql`` package gives the binaries (``/usr/lib/postgresql/<version>/bin``); the
system cluster it may have started is never touched. The server's data folder is
``<state_dir>/postgres/data`` (``initdb`` on first start, superuser = the URL's user, trust
authentication on the loopback listener only, no Unix socket), it listens on the URL's port, and
it is a child process like the other services (``stack down`` stops it with SIGINT, PostgreSQL's
"fast" shutdown: SIGTERM would wait for every client to disconnect).

PostgreSQL refuses to run as root. Under root (CI containers) the server runs as the package's
``postgres`` user: its data folder is handed to that user, and folders on the way to it that
others cannot traverse get the traverse bit (``o+x``, not read) at every start, or the server could
not reach it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from vitalchain.app.stack.probes import ProbeFailed
from vitalchain.app.stack.tools import MissingToolError
from vitalchain.config import Settings

RUN_AS_WHEN_ROOT = "postgres"


def pg_bin(name: str) -> Path:
    """``initdb``/``postgres`` of the newest installed PostgreSQL major version."""
    for version in sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                          key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                          reverse=True):
        candidate = version / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise MissingToolError(f"{name} not found under /usr/lib/postgresql/*/bin (Debian package "
                           "postgresql); run `make setup` first")


def _run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    """The prefix that drops root for PostgreSQL (empty when not root) and that user."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam(RUN_AS_WHEN_ROOT)
    except KeyError as exc:
        raise MissingToolError("running as root, and there is no 'postgres' user to run "
                               "PostgreSQL as (Debian package postgresql creates it)") from exc
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise MissingToolError("setpriv not found (Debian package util-linux)")
    return [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"], user


def _reachable_for(path: Path, user: pwd.struct_passwd) -> None:
    """Give ``user`` the traverse bit on the folders above ``path`` that lack it."""
    for folder in reversed(path.parents):
        mode = folder.stat().st_mode
        if folder.stat().st_uid != user.pw_uid and not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


def data_dir(settings: Settings) -> Path:
    return settings.state_dir / "postgres" / "data"


def prepare_postgres(settings: Settings) -> list[str]:
    """initdb on first start; returns the server's command line."""
    url = settings.private_postgres
    if url is None:
        raise MissingToolError("no private PostgreSQL: VITALCHAIN_LEDGER_URL does not name 127.0.0.1")
    prefix, user = _run_as()
    data = data_dir(settings)
    if user is not None:
        # At every start, not only at initdb: others may take the bit away meanwhile (pytest
        # resets its /tmp/pytest-of-<user> to 0700 whenever a session starts).
        data.parent.mkdir(parents=True, exist_ok=True)
        _reachable_for(data, user)
    if not (data / "PG_VERSION").is_file():
        if data.exists():
            shutil.rmtree(data)  # an initdb that did not finish
        data.mkdir(parents=True, mode=0o700)
        if user is not None:
            os.chown(data, user.pw_uid, user.pw_gid)
        done = subprocess.run([*prefix, str(pg_bin("initdb")), "-D", str(data), "-U", url.user,
                               "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ProbeFailed(f"initdb failed ({done.returncode}): {done.stderr.strip()[-600:]}")
    return [*prefix, str(pg_bin("postgres")), "-D", str(data), "-h", url.host, "-p", str(url.port),
            "-c", "unix_socket_directories=", "-c", "max_connections=200",
            "-c", "log_min_messages=warning", "-c", "log_connections=off"]


def probe_postgres(settings: Settings, timeout: float = 3.0) -> str:
    """A real query on the server (``SELECT version()`` in the maintenance database)."""
    import psycopg

    url = settings.private_postgres
    if url is None:
        raise ProbeFailed("VITALCHAIN_LEDGER_URL does not name 127.0.0.1")
    try:
        with psycopg.connect(host=url.host, port=url.port, user=url.user, dbname="postgres",
                             connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('server_version')").fetchone()
    except psycopg.Error as exc:
        raise ProbeFailed(f"PostgreSQL query failed: {str(exc).strip()[:200]}") from exc
    return f"query ok, version {row[0] if row else '?'}"


def ensure_ledger_database(settings: Settings) -> None:
    """Create the URL's database on the private server when it is missing."""
    import psycopg
    from psycopg import sql

    url = settings.private_postgres
    if url is None:
        return
    with psycopg.connect(host=url.host, port=url.port, user=url.user, dbname="postgres",
                         autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (url.database,)).fetchone():
            return
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # a concurrent caller made it
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
