"""Pool membership and hibernated state on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from aster.server.clock import utcnow
from aster.server.errors import AlreadyExists, NotFound
from aster.server.ids import new_id
from aster.server.pools.models import PoolAgentState, PoolMember
from aster.server.sessions.models import Message, Session, SessionSpec
from aster.server.storage.agent_repository import AgentRepository
from aster.server.storage.database import Database
from aster.server.storage.pool_repository import PoolRepository
from aster.server.storage.session_repository import SessionRepository
from aster.server.storage.tables import AgentRow


def member(agent_id: str = "", **fields: object) -> PoolMember:
    values: dict[str, object] = {
        "agent_id": agent_id or new_id("agt"),
        "state": PoolAgentState.HIBERNATED,
        "create_time": utcnow(),
        **fields,
    }
    return PoolMember(**values)  # type: ignore[arg-type]


class _Repo(PoolRepository):
    """A pool repository whose `add` first creates the agent row (pooled
    agents reference their agent)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.db = db

    async def add(self, tenant: str, member: PoolMember) -> PoolMember:
        async with self.db.session() as session:
            if await session.get(AgentRow, (tenant, member.agent_id)) is None:
                session.add(agent_row(tenant, member.agent_id))
        return await super().add(tenant, member)


def agent_row(tenant: str, agent_id: str) -> AgentRow:
    now = utcnow()
    return AgentRow(
        tenant=tenant,
        id=agent_id,
        display_name="a",
        model={},
        tools=[],
        labels={},
        metadata_={},
        state="ACTIVE",
        create_time=now,
        update_time=now,
        revision=1,
    )


async def test_add_get_and_tenant_isolation(database: Database) -> None:
    repo = _Repo(database)
    added = await repo.add("t1", member(snapshot={"sessions": ["ses_a"]}))
    got = await repo.get("t1", added.agent_id)
    assert got.state is PoolAgentState.HIBERNATED
    assert got.snapshot == {"sessions": ["ses_a"]}
    with pytest.raises(AlreadyExists):
        await repo.add("t1", member(added.agent_id))
    # Another tenant neither sees it nor collides with it.
    with pytest.raises(NotFound) as caught:
        await repo.get("t2", added.agent_id)
    assert caught.value.field == "agent_id"
    assert await repo.find("t2", added.agent_id) is None
    await repo.add("t2", member(added.agent_id))


async def test_live_hold_belongs_to_one_replica(database: Database) -> None:
    repo = _Repo(database)
    m = await repo.add("t1", member())
    now = utcnow()
    hold = now + timedelta(seconds=30)
    assert await repo.mark_live("t1", m.agent_id, "rep_a", hold)
    assert (await repo.get("t1", m.agent_id)).effective_state(utcnow()) is PoolAgentState.LIVE
    # Replica b warms it too: a's hibernation must not flip b's live agent.
    assert await repo.mark_live("t1", m.agent_id, "rep_b", hold)
    assert not await repo.hibernate("t1", m.agent_id, "rep_a", now, {"sessions": []})
    assert await repo.renew("rep_a", hold) == set()
    assert await repo.renew("rep_b", hold) == {("t1", m.agent_id)}
    assert await repo.hibernate("t1", m.agent_id, "rep_b", now, {"sessions": ["s1"]})
    stored = await repo.get("t1", m.agent_id)
    assert (stored.state, stored.replica, stored.snapshot) == (
        PoolAgentState.HIBERNATED,
        "",
        {"sessions": ["s1"]},
    )
    assert stored.hibernate_time is not None


async def test_a_lapsed_hold_counts_as_hibernated(database: Database) -> None:
    repo = _Repo(database)
    lapsed, live = await repo.add("t1", member()), await repo.add("t1", member())
    now = utcnow()
    await repo.mark_live("t1", lapsed.agent_id, "rep_dead", now - timedelta(seconds=1))
    await repo.mark_live("t1", live.agent_id, "rep_a", now + timedelta(seconds=30))
    counts = await repo.count_states("t1", utcnow())
    assert (counts[PoolAgentState.LIVE], counts[PoolAgentState.HIBERNATED]) == (1, 1)
    only_live, _ = await repo.list_page("t1", PoolAgentState.LIVE, utcnow(), None, 10)
    assert [m.agent_id for m in only_live] == [live.agent_id]
    asleep, _ = await repo.list_page("t1", PoolAgentState.HIBERNATED, utcnow(), None, 10)
    assert [m.agent_id for m in asleep] == [lapsed.agent_id]
    assert (await repo.count_states("t2", utcnow()))[PoolAgentState.LIVE] == 0


async def test_list_pages_oldest_first(database: Database) -> None:
    from aster.server.pagination import Cursor

    repo = _Repo(database)
    start = utcnow()
    ids = []
    for i in range(5):
        m = await repo.add("t1", member(create_time=start + timedelta(seconds=i)))
        ids.append(m.agent_id)
    await repo.add("t2", member())
    first, more = await repo.list_page("t1", None, utcnow(), None, 3)
    assert more and [m.agent_id for m in first] == ids[:3]
    last = first[-1]
    rest, more = await repo.list_page(
        "t1", None, utcnow(), Cursor(last.create_time.isoformat(), last.agent_id), 3
    )
    assert not more and [m.agent_id for m in rest] == ids[3:]


async def test_draining_blocks_warming_and_remove_drops(database: Database) -> None:
    repo = _Repo(database)
    m = await repo.add("t1", member())
    draining = await repo.start_draining("t1", m.agent_id)
    assert draining.state is PoolAgentState.DRAINING
    now = utcnow()
    assert not await repo.mark_live("t1", m.agent_id, "rep_a", now + timedelta(seconds=9))
    await repo.remove("t1", m.agent_id)
    assert await repo.find("t1", m.agent_id) is None
    assert not await repo.mark_live("t1", m.agent_id, "rep_a", now + timedelta(seconds=9))
    with pytest.raises(NotFound):
        await repo.start_draining("t1", m.agent_id)


async def test_context_version_sees_appends_and_rollbacks(database: Database) -> None:
    repo = _Repo(database)
    sessions = SessionRepository(database)
    now = utcnow()
    s = await sessions.create(
        "t1",
        Session(
            id=new_id("ses"), spec=SessionSpec(agent_id="agt_x"), create_time=now, update_time=now
        ),
    )
    assert await repo.context_version("t1", s.id) == (0, 0)
    for text in ["a", "b", "c"]:
        await sessions.append_message(
            "t1",
            Message(
                id=new_id("msg"), session_id=s.id, role="user", content=text, create_time=utcnow()
            ),
        )
    assert await repo.context_version("t1", s.id) == (3, 3)
    await sessions.rewind("t1", s.id, 1)
    assert await repo.context_version("t1", s.id) == (1, 1)
    assert await repo.context_version("t2", s.id) == (0, 0)


async def test_uses_are_recorded_in_one_batch_and_never_go_back(database: Database) -> None:
    repo = _Repo(database)
    a, b = await repo.add("t1", member()), await repo.add("t1", member())
    early, late = utcnow(), utcnow() + timedelta(seconds=5)
    await repo.record_uses([("t1", a.agent_id, late), ("t1", b.agent_id, early)])
    await repo.record_uses([("t1", a.agent_id, early), ("t2", b.agent_id, late)])
    assert (await repo.get("t1", a.agent_id)).last_use_time == late
    assert (await repo.get("t1", b.agent_id)).last_use_time == early
    await repo.record_uses([])


async def test_deleting_the_agent_takes_it_out_of_the_pool_at_once(database: Database) -> None:
    repo = _Repo(database)
    gone, kept = await repo.add("t1", member()), await repo.add("t1", member())
    await repo.add("t2", member(gone.agent_id))
    await AgentRepository(database).delete("t1", gone.agent_id, None)
    assert await repo.find("t1", gone.agent_id) is None
    assert await repo.find("t1", kept.agent_id) is not None
    assert await repo.find("t2", gone.agent_id) is not None  # same id, other tenant
    counts = await repo.count_states("t1", utcnow())
    assert sum(counts.values()) == 1
