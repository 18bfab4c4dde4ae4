"""Working memory (service and repository) on SQLite and PostgreSQL: CRUD,
TTL expiry under a controllable clock, compare-and-set, prefix listing and
pagination, clearing, scopes and tenant isolation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from aster.server.agents.models import AgentSpec
from aster.server.agents.service import AgentService
from aster.server.errors import AlreadyExists, EtagMismatch, InvalidArgument, NotFound
from aster.server.memory.working_models import EntryValue, Scope, Writer
from aster.server.memory.working_service import ScopeChecker, WorkingMemoryService
from aster.server.sessions.models import SessionSpec
from aster.server.sessions.service import SessionService
from aster.server.storage.agent_repository import AgentRepository
from aster.server.storage.database import Database
from aster.server.storage.session_repository import SessionRepository
from aster.server.storage.working_memory_repository import WorkingMemoryRepository
from tests.unit.storage.conftest import database  # noqa: F401 - the shared fixture


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(database: Database) -> Database:  # noqa: F811 - the imported fixture
    """The storage tests' `database` (SQLite, and PostgreSQL where marked)."""
    return database


@pytest.fixture
def agents(db: Database) -> AgentService:
    return AgentService(AgentRepository(db))


@pytest.fixture
def sessions(db: Database, agents: AgentService) -> SessionService:
    return SessionService(SessionRepository(db), agents)


@pytest.fixture
def memory(
    db: Database, agents: AgentService, sessions: SessionService, clock: Clock
) -> WorkingMemoryService:
    return WorkingMemoryService(
        WorkingMemoryRepository(db),
        ScopeChecker(agents, sessions),
        max_value_bytes=1024,
        clock=clock,
    )


async def agent_scope(agents: AgentService, tenant: str = "t1") -> Scope:
    agent = await agents.create(tenant, AgentSpec(display_name="A"))
    return Scope(agent_id=agent.id)


def v(value: object, ttl: int = 0) -> EntryValue:
    return EntryValue(value, ttl)


async def test_set_get_update_delete(memory: WorkingMemoryService, agents: AgentService) -> None:
    scope = await agent_scope(agents)
    value = {"name": "Ada", "tags": ["x", 1, 2.5, True, None], "nested": {"k": []}}
    created = await memory.set("t1", scope, "user:profile", v(value), writer=Writer(principal="k1"))
    assert created.id.startswith("wme_")
    assert created.expire_time is None
    assert created.writer == Writer(principal="k1")

    fetched = await memory.get("t1", created.id)
    assert (fetched.key, fetched.value, fetched.scope, fetched.etag) == (
        "user:profile",
        value,
        scope,
        created.etag,
    )

    updated = await memory.update("t1", created.id, v(42), ["value"], created.etag)
    assert updated.value == 42
    assert updated.etag != created.etag
    assert updated.create_time == created.create_time
    assert (await memory.get("t1", created.id)).value == 42

    await memory.delete("t1", created.id, updated.etag)
    with pytest.raises(NotFound):
        await memory.get("t1", created.id)
    with pytest.raises(NotFound):
        await memory.delete("t1", created.id)


async def test_every_json_value_round_trips(
    memory: WorkingMemoryService, agents: AgentService
) -> None:
    scope = await agent_scope(agents)
    values: list[object] = [None, 0, -1.5, "", "héllo ✓", [], {}, False, [[{"a": None}]]]
    for index, value in enumerate(values):
        entry = await memory.set("t1", scope, f"k{index}", v(value))
        assert (await memory.get("t1", entry.id)).value == value


async def test_set_is_an_upsert_that_keeps_the_id(
    memory: WorkingMemoryService, agents: AgentService, clock: Clock
) -> None:
    scope = await agent_scope(agents)
    first = await memory.set("t1", scope, "counter", v(1, ttl=60))
    clock.advance(5)
    second = await memory.set("t1", scope, "counter", v(2), writer=Writer(run_id="run_1"))
    assert second.id == first.id
    assert second.create_time == first.create_time
    assert second.update_time == clock.now
    assert (second.value, second.ttl_seconds, second.expire_time) == (2, 0, None)
    assert second.writer.run_id == "run_1"
    assert second.etag != first.etag
    page = await memory.list("t1", scope, "", 0, "")
    assert [e.value for e in page.items] == [2]


async def test_compare_and_set_by_etag(memory: WorkingMemoryService, agents: AgentService) -> None:
    scope = await agent_scope(agents)
    first = await memory.set("t1", scope, "lock", v("a"))
    second = await memory.set("t1", scope, "lock", v("b"), etag=first.etag)
    # the first etag is stale now: Set, Update and Delete refuse it
    with pytest.raises(EtagMismatch):
        await memory.set("t1", scope, "lock", v("c"), etag=first.etag)
    with pytest.raises(EtagMismatch):
        await memory.update("t1", first.id, v("c"), ["value"], first.etag)
    with pytest.raises(EtagMismatch):
        await memory.delete("t1", first.id, first.etag)
    assert (await memory.get("t1", first.id)).value == "b"
    # an etag for a key that does not exist is stale too
    with pytest.raises(EtagMismatch):
        await memory.set("t1", scope, "other", v(1), etag=second.etag)
    # set-if-absent
    with pytest.raises(AlreadyExists):
        await memory.set("t1", scope, "lock", v("d"), if_absent=True)
    made = await memory.set("t1", scope, "fresh", v("d"), if_absent=True)
    assert made.value == "d"
    with pytest.raises(InvalidArgument, match="if_absent"):
        await memory.set("t1", scope, "x", v(1), etag=made.etag, if_absent=True)


async def test_concurrent_compare_and_set_lets_exactly_one_win(
    memory: WorkingMemoryService, agents: AgentService
) -> None:
    scope = await agent_scope(agents)
    base = await memory.set("t1", scope, "slot", v(0))
    results = await asyncio.gather(
        *(memory.set("t1", scope, "slot", v(i), etag=base.etag) for i in range(1, 6)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1, results
    assert all(isinstance(r, EtagMismatch) for r in results if isinstance(r, BaseException))
    assert (await memory.get("t1", base.id)).value == winners[0].value


async def test_concurrent_plain_sets_of_a_new_key_make_one_entry(
    memory: WorkingMemoryService, agents: AgentService
) -> None:
    scope = await agent_scope(agents)
    entries = await asyncio.gather(*(memory.set("t1", scope, "race", v(i)) for i in range(6)))
    assert len({e.id for e in entries}) == 1
    page = await memory.list("t1", scope, "", 0, "")
    assert len(page.items) == 1


async def test_ttl_expiry_is_immediate_and_purged_later(
    memory: WorkingMemoryService, agents: AgentService, clock: Clock
) -> None:
    scope = await agent_scope(agents)
    short = await memory.set("t1", scope, "short", v("s", ttl=10))
    keep = await memory.set("t1", scope, "keep", v("k"))
    assert short.expire_time == clock.now + timedelta(seconds=10)
    clock.advance(9.999)
    assert (await memory.get("t1", short.id)).value == "s"
    clock.advance(0.001)
    with pytest.raises(NotFound):
        await memory.get("t1", short.id)
    assert await memory.find("t1", scope, "short") is None
    assert [e.key for e in (await memory.list("t1", scope, "", 0, "")).items] == ["keep"]
    with pytest.raises(NotFound):
        await memory.update("t1", short.id, v(1), ["value"], "")
    with pytest.raises(NotFound):
        await memory.delete("t1", short.id)
    with pytest.raises(EtagMismatch):
        await memory.set("t1", scope, "short", v(1), etag=short.etag)
    # an expired key is absent: set-if-absent takes it, as a new entry
    again = await memory.set("t1", scope, "short", v("again", ttl=5), if_absent=True)
    assert again.id != short.id
    clock.advance(6)
    assert await memory.purge_expired() == 1
    assert await memory.purge_expired() == 0
    assert (await memory.get("t1", keep.id)).value == "k"


async def test_every_write_restarts_the_ttl(
    memory: WorkingMemoryService, agents: AgentService, clock: Clock
) -> None:
    scope = await agent_scope(agents)
    entry = await memory.set("t1", scope, "k", v(1, ttl=10))
    clock.advance(8)
    entry = await memory.update("t1", entry.id, v(2), ["value"], "")
    assert entry.ttl_seconds == 10
    assert entry.expire_time == clock.now + timedelta(seconds=10)
    clock.advance(8)
    assert (await memory.get("t1", entry.id)).value == 2
    # ttl_seconds 0 through the mask removes the expiry
    entry = await memory.update("t1", entry.id, v(None, 0), ["ttl_seconds"], "")
    assert (entry.expire_time, entry.value) == (None, 2)
    clock.advance(10_000)
    assert (await memory.get("t1", entry.id)).value == 2


async def test_prefix_listing_and_pagination(
    memory: WorkingMemoryService, agents: AgentService, clock: Clock
) -> None:
    scope = await agent_scope(agents)
    keys = ["task/3", "task/1", "Task/9", "task/10", "tasks", "user:a", "task/2", "task_x"]
    for key in keys:
        await memory.set("t1", scope, key, v(key))
    await memory.set("t1", scope, "task/gone", v(0, ttl=1))
    clock.advance(2)
    seen, token, pages = [], "", 0
    while True:
        page = await memory.list("t1", scope, "task/", 2, token)
        seen += [e.key for e in page.items]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    # by code point: case-sensitive prefix, '1' < '10' < '2', expired skipped
    assert seen == ["task/1", "task/10", "task/2", "task/3"]
    assert pages == 2
    everything = await memory.list("t1", scope, "", 0, "")
    assert [e.key for e in everything.items] == sorted(keys)
    # A prefix is a key range: "task" takes "tasks" and "task_x" but not "Task/9".
    task = await memory.list("t1", scope, "task", 0, "")
    assert [e.key for e in task.items] == sorted(k for k in keys if k.startswith("task"))
    with pytest.raises(InvalidArgument, match="page_token"):
        await memory.list(
            "t1", scope, "user", 2, (await memory.list("t1", scope, "", 1, "")).next_page_token
        )
    with pytest.raises(InvalidArgument, match="page_size"):
        await memory.list("t1", scope, "", -1, "")


async def test_scopes_are_separate_and_clear_touches_one(
    memory: WorkingMemoryService,
    agents: AgentService,
    sessions: SessionService,
    clock: Clock,
) -> None:
    scope = await agent_scope(agents)
    session = await sessions.create("t1", SessionSpec(agent_id=scope.agent_id))
    scopes = [
        scope,
        Scope(session_id=session.id),
        Scope(agent_id=scope.agent_id, session_id=session.id),
        Scope(room_id="room-1"),
        Scope(),
    ]
    for index, each in enumerate(scopes):
        await memory.set("t1", each, "same", v(index))
        await memory.set("t1", each, "other", v(index))
    for index, each in enumerate(scopes):
        assert (await memory.find("t1", each, "same")).value == index  # type: ignore[union-attr]
    await memory.set("t1", scope, "dying", v(0, ttl=1))
    clock.advance(2)
    # the expired entry is removed but not counted
    assert await memory.clear("t1", scope) == 2
    assert (await memory.list("t1", scope, "", 0, "")).items == []
    for index, each in enumerate(scopes[1:], start=1):
        assert len((await memory.list("t1", each, "", 0, "")).items) == 2, each
        assert (await memory.find("t1", each, "same")).value == index  # type: ignore[union-attr]
    assert await memory.clear("t1", Scope()) == 2
    assert await memory.clear("t1", Scope()) == 0
    assert await memory.delete_key("t1", scopes[3], "same") is True
    assert await memory.delete_key("t1", scopes[3], "same") is False


async def test_tenants_do_not_see_each_other(
    memory: WorkingMemoryService, agents: AgentService
) -> None:
    scope = await agent_scope(agents, "t1")
    entry = await memory.set("t1", scope, "secret", v("t1 only"))
    shared = await memory.set("t1", Scope(), "shared", v("t1 tenant"))
    for call in (
        memory.get("t2", entry.id),
        memory.update("t2", entry.id, v(1), ["value"], ""),
        memory.delete("t2", entry.id),
        memory.delete("t2", shared.id),
        # t1's agent does not exist in t2
        memory.set("t2", scope, "secret", v(1)),
        memory.list("t2", scope, "", 0, ""),
        memory.clear("t2", scope),
    ):
        with pytest.raises(NotFound):
            await call
    assert (await memory.list("t2", Scope(), "", 0, "")).items == []
    assert await memory.clear("t2", Scope()) == 0
    assert (await memory.get("t1", shared.id)).value == "t1 tenant"
    assert (await memory.get("t1", entry.id)).value == "t1 only"


async def test_bad_input_names_the_field(
    memory: WorkingMemoryService, agents: AgentService, sessions: SessionService
) -> None:
    scope = await agent_scope(agents)
    existing = await memory.set("t1", scope, "existing", v(1))
    cases: list[tuple[object, str]] = [
        (memory.set("t1", scope, "", v(1)), "entry.key"),
        (memory.set("t1", scope, "has space", v(1)), "entry.key"),
        (memory.set("t1", scope, "k" * 257, v(1)), "entry.key"),
        (memory.set("t1", scope, "ключ", v(1)), "entry.key"),
        (memory.set("t1", scope, "k", v("x" * 1100)), "entry.value"),
        (memory.set("t1", scope, "k", v(float("nan"))), "entry.value"),
        (memory.set("t1", scope, "k", v(1, ttl=-1)), "entry.ttl_seconds"),
        (memory.set("t1", Scope(agent_id="Bad Id"), "k", v(1)), "entry.agent_id"),
        (memory.set("t1", Scope(room_id="-x"), "k", v(1)), "entry.room_id"),
        (memory.list("t1", scope, "bad prefix", 0, ""), "prefix"),
        (memory.get("t1", "Not An Id"), "id"),
        (memory.update("t1", existing.id, v(1), ["key"], ""), "update_mask"),
        (memory.update("t1", existing.id, v(1), [], ""), "update_mask"),
        (memory.update("t1", existing.id, v("x" * 1100), ["value"], ""), "entry.value"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidArgument) as err:
            await call  # type: ignore[misc]
        assert err.value.field == field, (field, err.value.message)
    # a session named with an agent must be that agent's
    other = await agent_scope(agents)
    session = await sessions.create("t1", SessionSpec(agent_id=other.agent_id))
    with pytest.raises(InvalidArgument, match="belongs to agent"):
        await memory.set("t1", Scope(scope.agent_id, session.id), "k", v(1))
    with pytest.raises(NotFound):
        await memory.set("t1", Scope(session_id="ses_missing"), "k", v(1))
    # the size limit counts UTF-8 bytes of compact JSON: 1024 fits, 1025 does not
    await memory.set("t1", scope, "k", v("é" * 511))  # 2 quotes + 1022 bytes
    with pytest.raises(InvalidArgument, match="1025 bytes"):
        await memory.set("t1", scope, "k", v("é" * 511 + "a"))


async def test_entries_of_a_deleted_agent_or_session_are_unreachable_then_purged(
    memory: WorkingMemoryService, agents: AgentService, sessions: SessionService
) -> None:
    scope = await agent_scope(agents)
    session = await sessions.create("t1", SessionSpec(agent_id=scope.agent_id))
    other = await agent_scope(agents)
    of_agent = await memory.set("t1", scope, "k", v(1))
    of_session = await memory.set("t1", Scope(session_id=session.id), "k", v(2))
    of_tenant = await memory.set("t1", Scope(), "k", v(3))
    of_other = await memory.set("t1", other, "k", v(4))
    # The same ids in another tenant's rows are no orphans of this tenant.
    await memory.set("t2", await agent_scope(agents, "t2"), "k", v(5))
    assert await memory.purge_orphans() == 0

    await sessions.delete("t1", session.id, "")
    with pytest.raises(NotFound) as caught:
        await memory.get("t1", of_session.id)
    assert of_session.id in caught.value.message
    assert await memory.purge_orphans() == 1

    await agents.delete("t1", scope.agent_id, "")
    with pytest.raises(NotFound):
        await memory.get("t1", of_agent.id)
    with pytest.raises(NotFound):
        await memory.list("t1", scope, "", 0, "")
    assert await memory.purge_orphans() == 1
    assert await memory.purge_orphans() == 0
    # Entries of other scopes stay.
    assert (await memory.get("t1", of_tenant.id)).value == 3
    assert (await memory.get("t1", of_other.id)).value == 4
