"""Shared fixtures: the real server and Envoy on free ports, and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from tests.processes import Ports, Process, start_edge, start_server

POSTGRES_URL = os.environ.get(
    "ASTER_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("ASTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@dataclass
class Stack:
    """A running server and edge."""

    ports: Ports
    data_dir: Path
    server: Process
    edge: Process

    @property
    def grpc_target(self) -> str:
        """host:port of the gRPC server."""
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_base(self) -> str:
        """Base URL of the REST edge."""
        return f"http://127.0.0.1:{self.ports.http}"


def _serve_stack(data_dir: Path, **env: str) -> Iterator[Stack]:
    """A server and its edge until the generator is closed, then both stopped."""
    ports = Ports()
    server = start_server(ports, data_dir, **env)
    try:
        edge = start_edge(ports, data_dir)
    except BaseException:
        server.stop()
        raise
    yield Stack(ports, data_dir, server, edge)
    edge.stop()
    assert server.stop() == 0, server.log_tail()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One server (SQLite) and one Envoy for the whole test session."""
    yield from _serve_stack(tmp_path_factory.mktemp("stack"))


DatabaseFor = Callable[[str], dict[str, str]]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def database_for(request: pytest.FixtureRequest) -> DatabaseFor:
    """For each database in turn, the server environment that puts a named
    server on it: SQLite in its data dir (no setting), or a fresh PostgreSQL
    database of that name, shared with no other server."""
    if request.param == "sqlite":
        return lambda name: {}
    postgres_url: str = request.getfixturevalue("postgres_url")
    return lambda name: {"ASTER_DATABASE_URL": fresh_postgres_database(postgres_url, name)}


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Stack]:
    """One server on PostgreSQL (a fresh database of its own) and its edge, per module."""
    url = fresh_postgres_database(postgres_url, "stack")
    yield from _serve_stack(tmp_path_factory.mktemp("pg-stack"), ASTER_DATABASE_URL=url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_stack(request: pytest.FixtureRequest) -> Stack:
    """The SQLite stack, then the PostgreSQL one."""
    name = "stack" if request.param == "sqlite" else "pg_stack"
    stack: Stack = request.getfixturevalue(name)
    return stack


@pytest.fixture
def stack_under_test(stack: Stack) -> Stack:
    """The stack that `channel` and `http` talk to: the SQLite one. A module
    overrides this with `any_stack` to run its tests on both databases."""
    return stack


@pytest.fixture
async def channel(stack_under_test: Stack) -> AsyncIterator[grpc.aio.Channel]:
    """An asyncio channel to the stack's gRPC port."""
    async with grpc.aio.insecure_channel(stack_under_test.grpc_target) as chan:
        yield chan


@pytest.fixture
async def http(stack_under_test: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the stack's REST edge."""
    async with httpx.AsyncClient(base_url=stack_under_test.http_base, timeout=10) as client:
        yield client


def _postgres_reachable(url: str) -> str | None:
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")

    async def probe() -> None:
        conn = await asyncpg.connect(dsn, timeout=3)
        await conn.close()

    try:
        # The fixture may be set up inside the test's running event loop.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, probe()).result()
        return None
    except Exception as err:
        return f"{type(err).__name__}: {err}"


def fresh_postgres_database(url: str, name: str) -> str:
    """Re-creates database `<url's database>_<name>` on the server of `url`
    and returns its URL, so that a server under test has a database no other
    test resets or shares."""
    import asyncpg
    from sqlalchemy.engine import make_url

    base = make_url(url)
    database = f"{base.database}_{name}"
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)

    async def recreate() -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, recreate()).result()
    return base.set(database=database).render_as_string(hide_password=False)


def _redis_reachable(url: str) -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=3)
        client.ping()
        client.close()
        return None
    except Exception as err:
        return f"{type(err).__name__}: {err}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis URL. Missing Redis fails under CI=true and skips
    (with the reason) elsewhere."""
    problem = _redis_reachable(REDIS_URL)
    if problem:
        message = f"Redis at {REDIS_URL} is unreachable ({problem})"
        if IN_CI:
            pytest.fail(message + "; CI=true requires it")
        pytest.skip(message)
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL URL. Missing PostgreSQL fails under CI=true and
    skips (with the reason) elsewhere."""
    problem = _postgres_reachable(POSTGRES_URL)
    if problem:
        message = f"PostgreSQL at {POSTGRES_URL} is unreachable ({problem})"
        if IN_CI:
            pytest.fail(message + "; CI=true requires it")
        pytest.skip(message)
    return POSTGRES_URL
