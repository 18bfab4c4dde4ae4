"""The agent repository and service on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from aster.server.agents.models import AgentSpec, AgentState, ModelConfig, SecretRef
from aster.server.agents.service import AgentService
from aster.server.errors import AlreadyExists, EtagMismatch, InvalidArgument, NotFound
from aster.server.storage import migrate
from aster.server.storage.agent_repository import AgentRepository
from aster.server.storage.database import Database


@pytest.fixture
def service(database: Database) -> AgentService:
    return AgentService(AgentRepository(database))


def helper(name: str = "Helper", **labels: str) -> AgentSpec:
    return AgentSpec(
        display_name=name,
        instructions="Be brief.",
        model=ModelConfig(
            provider="openai",
            model="gpt-x",
            temperature=0.5,
            api_key=SecretRef(env="OPENAI_API_KEY"),
            params={"delay_ms": 5, "script": [{"text": "hi"}]},
        ),
        tools=["calculator"],
        labels=labels,
        metadata={"nested": {"a": [1, 2]}},
    )


async def test_round_trip_keeps_every_field(service: AgentService) -> None:
    created = await service.create("t1", helper(team="ml"))
    fetched = await service.get("t1", created.id)
    assert fetched.spec == created.spec
    assert fetched.create_time == created.create_time
    assert fetched.etag == created.etag
    assert fetched.spec.model.api_key == SecretRef(env="OPENAI_API_KEY")


async def test_proposed_ids_and_duplicates(service: AgentService) -> None:
    await service.create("t1", helper(), proposed_id="my-agent")
    with pytest.raises(AlreadyExists):
        await service.create("t1", helper(), proposed_id="my-agent")
    # the same id in another tenant is another agent
    await service.create("t2", helper(), proposed_id="my-agent")
    with pytest.raises(InvalidArgument):
        await service.create("t1", helper(), proposed_id="Bad Id")


async def test_tenants_do_not_see_each_other(service: AgentService) -> None:
    agent = await service.create("t1", helper())
    with pytest.raises(NotFound):
        await service.get("t2", agent.id)
    with pytest.raises(NotFound):
        await service.delete("t2", agent.id, "")
    page = await service.list("t2", 0, "", "")
    assert page.items == []
    assert await service.count("t1") == 1


async def test_pagination_walks_every_agent_once(service: AgentService) -> None:
    created = [await service.create("t1", helper(f"a{i}")) for i in range(7)]
    seen, token, pages = [], "", 0
    while True:
        page = await service.list("t1", 3, token, "")
        seen += [a.id for a in page.items]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [a.id for a in created]
    assert pages == 3


async def test_filter_by_labels_and_state(service: AgentService) -> None:
    ml = await service.create("t1", helper("a", team="ml", tier="gold"))
    await service.create("t1", helper("b", team="web"))
    off = helper("c", team="ml")
    off.state = AgentState.DISABLED
    disabled = await service.create("t1", off)
    ids = lambda page: [a.id for a in page.items]  # noqa: E731
    assert ids(await service.list("t1", 0, "", "labels.team=ml")) == [ml.id, disabled.id]
    assert ids(await service.list("t1", 0, "", "labels.tier:*")) == [ml.id]
    assert ids(await service.list("t1", 0, "", "labels.team=ml AND state=DISABLED")) == [
        disabled.id
    ]


async def test_update_checks_the_etag(service: AgentService) -> None:
    agent = await service.create("t1", helper())
    patch = AgentSpec(display_name="Renamed")
    updated = await service.update("t1", agent.id, patch, ["display_name"], agent.etag)
    assert updated.spec.display_name == "Renamed"
    assert updated.spec.instructions == "Be brief."
    assert updated.etag != agent.etag
    assert updated.update_time >= agent.update_time
    with pytest.raises(EtagMismatch):
        await service.update("t1", agent.id, patch, ["display_name"], agent.etag)
    with pytest.raises(EtagMismatch):
        await service.delete("t1", agent.id, agent.etag)
    await service.delete("t1", agent.id, updated.etag)
    with pytest.raises(NotFound):
        await service.get("t1", agent.id)


async def test_concurrent_updates_with_one_etag_let_one_win(service: AgentService) -> None:
    agent = await service.create("t1", helper())

    async def rename(name: str) -> str:
        try:
            await service.update(
                "t1", agent.id, AgentSpec(display_name=name), ["display_name"], agent.etag
            )
            return "ok"
        except EtagMismatch:
            return "aborted"

    results = await asyncio.gather(*(rename(f"n{i}") for i in range(5)))
    assert results.count("ok") == 1
    assert results.count("aborted") == 4


async def test_update_validates_the_result(service: AgentService) -> None:
    agent = await service.create("t1", helper())
    with pytest.raises(InvalidArgument) as caught:
        await service.update("t1", agent.id, AgentSpec(display_name=""), ["display_name"], "")
    assert caught.value.field == "agent.display_name"


async def test_migrations_are_idempotent_and_at_head(database: Database) -> None:
    await migrate.upgrade(database)
    assert await migrate.current_revision(database) == migrate.head_revision()
