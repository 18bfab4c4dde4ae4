"""Shared fixtures: the real server and Envoy on free ports, and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
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


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One server (SQLite) and one Envoy for the whole test session."""
    data_dir = tmp_path_factory.mktemp("stack")
    ports = Ports()
    server = start_server(ports, data_dir)
    try:
        edge = start_edge(ports, data_dir)
    except BaseException:
        server.stop()
        raise
    yield Stack(ports, data_dir, server, edge)
    edge.stop()
    assert server.stop() == 0, server.log_tail()


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    """An asyncio channel to the stack's gRPC port."""
    async with grpc.aio.insecure_channel(stack.grpc_target) as chan:
        yield chan


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the stack's REST edge."""
    async with httpx.AsyncClient(base_url=stack.http_base, timeout=10) as client:
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
