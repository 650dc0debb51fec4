"""Fixtures that start vitalchain's real services on free loopback ports.

The session's ``stack`` is shared by the tests that only read and write; tests that stop or kill a
service take ``fresh_stack`` and get services of their own. ``isolated`` hands each test its own
topics, database and ledger on the shared stack, so tests never see each other's data.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vitalchain.app.stack.ports import free_ports
from vitalchain.app.stack.supervisor import Stack
from vitalchain.app.stack.topology import ensure_database, ensure_topics
from vitalchain.config import Settings, load_settings

_counter = itertools.count()

# A test that asks for any of these runs on real services: it is marked `integration`, and
# `make test-fast` (-m "not integration") leaves it out. Tests that start services some other way
# carry the marker themselves; under VITALCHAIN_TEST_FAST=1 starting a stack fails loudly, so a
# missing marker cannot hide (scripts/test-fast.sh).
SERVICE_FIXTURES = frozenset({"stack", "fresh_stack", "isolated", "postgres"})


def _on_postgres(item: pytest.Item) -> bool:
    """A case of a backend-parametrized test that runs on PostgreSQL (a service)."""
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "postgresql" in callspec.params.values()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())) or item.get_closest_marker("e2e") \
                or _on_postgres(item):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _no_services_in_fast_runs() -> Iterator[None]:
    if os.environ.get("VITALCHAIN_TEST_FAST") != "1":
        yield
        return

    def refuse(self: Stack, *args: object, **kwargs: object) -> None:
        raise RuntimeError("this test starts services: mark it `integration` (make test-fast runs none)")

    original, Stack.up = Stack.up, refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        Stack.up = original  # type: ignore[method-assign]


def stack_settings(state_dir: Path, **overrides: object) -> Settings:
    mqtt, kafka, influx, eth, rpc = free_ports(5)
    # Device signatures "optional" (the migration mode): most tests publish hand-written unsigned
    # payloads to test something else; a present signature is still checked, and the tests of
    # issue #13 (tests/test_signatures_*.py) run with "required", the default of new installs.
    values: dict[str, object] = dict(state_dir=state_dir, mqtt_port=mqtt, kafka_port=kafka,
                                     influx_port=influx, eth_port=eth, influx_rpc_port=rpc,
                                     device_signatures="optional")
    values.update(overrides)
    return load_settings(environ={}, **values)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(stack_settings(tmp_path_factory.mktemp("stack")))
    try:
        running.up()
        yield running
    finally:
        running.down()


@pytest.fixture
def fresh_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Stack]]:
    """A factory for stacks of the test's own (for tests that stop, kill or restart services)."""
    started: list[Stack] = []

    def make(services: tuple[str, ...] | None = None, **overrides: object) -> Stack:
        running = Stack(stack_settings(tmp_path_factory.mktemp("fresh"), **overrides))
        started.append(running)
        running.up(services)
        return running

    try:
        yield make
    finally:
        for running in started:
            running.down()


@pytest.fixture
def isolated(stack: Stack, tmp_path: Path) -> Settings:
    """Settings on the shared stack with topics, database and ledger of this test's own."""
    tag = f"t{next(_counter)}{uuid.uuid4().hex[:6]}"
    settings = stack.settings.with_overrides(
        raw_topic=f"vitals.raw.{tag}", dlq_topic=f"vitals.dlq.{tag}", influx_db=f"vc_{tag}",
        ledger_file=str(tmp_path / "ledger.sqlite"))
    ensure_topics(settings)
    ensure_database(settings)
    return settings


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A private PostgreSQL server for the session (``vitalchain stack``'s own, on a free port);
    tests take a database of their own on it (tests/pg_support.py ``new_database``)."""
    [port] = free_ports(1)
    running = Stack(stack_settings(tmp_path_factory.mktemp("postgres"),
                                   ledger_url=f"postgresql://vitalchain@127.0.0.1:{port}/vitalchain"))
    try:
        running.up(("postgres",))
        yield running
    finally:
        running.down()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a ledger store opens, once per backend: a SQLite file, or a fresh database on the
    session's PostgreSQL server (the ledger contract suite runs on both)."""
    if request.param == "sqlite":
        return tmp_path / "ledger.sqlite"
    from tests.pg_support import new_database

    return new_database(request.getfixturevalue("postgres"))
