"""Fixtures of the event bus tests: buses of both implementations, the
Redis ones under a stream key prefix of their own that is deleted
afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from aster.server.bus.base import EventBus
from aster.server.bus.in_process import InProcessBus
from aster.server.bus.redis_bus import RedisBus
from tests.unit.limits.conftest import delete_prefix

MakeBus = Callable[[], EventBus]
# Stream keys of these tests expire soon even if a test fails to delete them.
TTL_S = 120


@pytest.fixture
def stream_prefix() -> str:
    """A Redis key prefix no other test uses."""
    return f"aster:stream:test:{uuid.uuid4().hex}:"


@pytest.fixture(params=["in_process", pytest.param("redis", marks=pytest.mark.redis)])
async def make_bus(request: pytest.FixtureRequest, stream_prefix: str) -> AsyncIterator[MakeBus]:
    """Makes buses of one implementation. Redis ones share one Redis and
    prefix, so two of them act like two replicas; an in-process factory
    returns the same bus every time (one process)."""
    made: list[EventBus] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    shared = InProcessBus()

    def make() -> EventBus:
        bus: EventBus = (
            RedisBus(url, stream_prefix=stream_prefix, stream_ttl_s=TTL_S) if url else shared
        )
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.close()
    if url:
        delete_prefix(url, stream_prefix)


@pytest.fixture
async def bus(make_bus: MakeBus) -> EventBus:
    """One bus of each implementation."""
    return make_bus()
