"""PostgreSQL helpers for tests: a fresh database per test on the session's private server."""

from __future__ import annotations

import itertools
import os

import psycopg

from vitalchain.app.stack.supervisor import Stack

_counter = itertools.count()


def server_url(stack: Stack, database: str, user: str | None = None) -> str:
    url = stack.settings.private_postgres
    assert url is not None
    return f"postgresql://{user or url.user}@{url.host}:{url.port}/{database}"


def admin(stack: Stack, database: str = "postgres") -> psycopg.Connection:
    """A superuser connection (the URL's user is the server's superuser)."""
    return psycopg.connect(server_url(stack, database), autocommit=True)


def new_database(stack: Stack) -> str:
    """The URL of a database no other test uses."""
    name = f"t{os.getpid()}_{next(_counter)}"
    with admin(stack) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url(stack, name)
