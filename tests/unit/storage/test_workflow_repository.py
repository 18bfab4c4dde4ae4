"""Workflow definitions through WorkflowService and its repository, on SQLite
and PostgreSQL: versions, etags, update masks, deletes, tenants, lists, and
the agent and tool lookups of validation."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from aster.server.agents.models import AgentSpec
from aster.server.agents.service import AgentService
from aster.server.errors import AlreadyExists, EtagMismatch, InvalidArgument, NotFound
from aster.server.storage.agent_repository import AgentRepository
from aster.server.storage.database import Database
from aster.server.storage.tool_repository import ToolRepository
from aster.server.storage.workflow_repository import WorkflowRepository
from aster.server.tools.service import ToolService
from aster.server.workflows.definition_service import WorkflowService
from aster.server.workflows.models import (
    AgentStep,
    ApprovalStep,
    ConditionStep,
    RetryPolicy,
    Schedule,
    Step,
    ToolStep,
    WaitStep,
    WorkflowSpec,
)


@pytest.fixture
async def agents(database: Database) -> AgentService:
    return AgentService(AgentRepository(database))


@pytest.fixture
def service(database: Database, agents: AgentService) -> WorkflowService:
    return WorkflowService(
        WorkflowRepository(database), agents, ToolService(ToolRepository(database))
    )


def spec(name: str = "Flow", agent_id: str = "", **labels: str) -> WorkflowSpec:
    steps = [
        Step(
            "calc",
            ToolStep("calculator", {"expression": "{{ input.a }} * 2"}),
            next="check",
            retry=RetryPolicy(3, timedelta(seconds=1), 2.0, timedelta(seconds=5)),
            timeout=timedelta(seconds=30),
        ),
        Step("check", ConditionStep("steps.calc.output.result > 10", "ok", ""), next="pause"),
        Step("ok", ApprovalStep("Fine?")),
        Step("pause", WaitStep(timedelta(milliseconds=250))),
    ]
    if agent_id:
        steps[-1] = dataclasses.replace(steps[-1], next="ask")
        steps.append(Step("ask", AgentStep(agent_id, "Result: {{ steps.calc.output }}")))
    return WorkflowSpec(
        display_name=name,
        description="d",
        steps=steps,
        schedules=[Schedule(id="", cron="0 3 * * *", time_zone="Europe/Paris", input={"a": 1})],
        labels=labels,
        metadata={"owner": {"team": "ops"}},
    )


async def test_create_get_round_trip_every_field(
    service: WorkflowService, agents: AgentService
) -> None:
    agent = await agents.create("t1", AgentSpec(display_name="A"))
    created = await service.create("t1", spec(agent_id=agent.id, team="ml"))
    assert created.id.startswith("wf_") and created.version == 1
    assert created.spec.schedules[0].id.startswith("sch_")
    got = await service.get("t1", created.id)
    assert got.spec == created.spec
    assert got.etag == created.etag and got.version == 1
    assert got.create_time == created.create_time


async def test_update_makes_a_new_version_and_keeps_the_old(service: WorkflowService) -> None:
    first = await service.create("t1", spec(), "flow")
    changed = dataclasses.replace(spec("Renamed"), schedules=first.spec.schedules)
    second = await service.update("t1", "flow", changed, ["display_name"], first.etag)
    assert second.version == 2 and second.etag != first.etag
    assert second.spec.display_name == "Renamed" and second.spec.steps == first.spec.steps
    assert (await service.get("t1", "flow")).version == 2
    old = await service.get_version("t1", "flow", 1)
    assert old.spec.display_name == "Flow" and old.version == 1
    assert (await service.get_version("t1", "flow", 2)).spec.display_name == "Renamed"
    with pytest.raises(NotFound):
        await service.get_version("t1", "flow", 3)
    # A stale etag, and a mask path that cannot be updated.
    with pytest.raises(EtagMismatch):
        await service.update("t1", "flow", changed, ["description"], first.etag)
    with pytest.raises(InvalidArgument, match="update_mask"):
        await service.update("t1", "flow", changed, ["version"], "")


async def test_an_update_is_validated_like_a_create(service: WorkflowService) -> None:
    await service.create("t1", spec(), "flow")
    bad = spec()
    bad.steps[1] = dataclasses.replace(bad.steps[1], next="calc")
    with pytest.raises(InvalidArgument) as caught:
        await service.update("t1", "flow", bad, ["steps"], "")
    assert caught.value.field == "workflow.steps[1].next"
    assert (await service.get("t1", "flow")).version == 1


async def test_concurrent_updates_make_one_version_each_or_abort(service: WorkflowService) -> None:
    first = await service.create("t1", spec(), "flow")
    results = await asyncio.gather(
        *[
            service.update("t1", "flow", spec(f"v{i}"), ["display_name"], first.etag)
            for i in range(4)
        ],
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1 and all(
        isinstance(r, EtagMismatch) for r in results if r not in winners
    )
    assert (await service.get("t1", "flow")).version == 2


async def test_unknown_agent_and_tool_name_the_step(
    service: WorkflowService, agents: AgentService
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await service.create("t1", spec(agent_id="ghost"))
    assert caught.value.field == "workflow.steps[4].agent.agent_id"
    assert (
        caught.value.metadata["step"] == "ask" and "unknown agent 'ghost'" in caught.value.message
    )
    # Another tenant's agent is unknown here.
    other = await agents.create("t2", AgentSpec(display_name="B"))
    with pytest.raises(InvalidArgument, match="unknown agent"):
        await service.create("t1", spec(agent_id=other.id))
    bad = spec()
    bad.steps[0] = dataclasses.replace(bad.steps[0], action=ToolStep("no_such_tool"))
    with pytest.raises(InvalidArgument) as caught:
        await service.create("t1", bad)
    assert caught.value.field == "workflow.steps[0].tool.tool_id"
    assert caught.value.metadata["step"] == "calc"


async def test_tenants_do_not_see_each_other(service: WorkflowService) -> None:
    created = await service.create("t1", spec(), "flow")
    for call in (
        service.get("t2", "flow"),
        service.get_version("t2", "flow", 1),
        service.update("t2", "flow", spec(), ["display_name"], ""),
        service.delete("t2", "flow", ""),
    ):
        with pytest.raises(NotFound):
            await call
    assert (await service.list("t2", 0, "", "")).items == []
    # The same id in another tenant is another workflow.
    assert (await service.create("t2", spec("Other"), "flow")).spec.display_name == "Other"
    assert (await service.get("t1", "flow")).etag == created.etag


async def test_delete_keeps_versions_for_executions_and_ids_continue(
    service: WorkflowService,
) -> None:
    created = await service.create("t1", spec(), "flow")
    with pytest.raises(AlreadyExists):
        await service.create("t1", spec(), "flow")
    with pytest.raises(EtagMismatch):
        await service.delete("t1", "flow", "stale")
    await service.delete("t1", "flow", created.etag)
    with pytest.raises(NotFound):
        await service.get("t1", "flow")
    with pytest.raises(NotFound):
        await service.delete("t1", "flow", "")
    assert (await service.get_version("t1", "flow", 1)).spec == created.spec
    assert await service.count("t1") == 0
    again = await service.create("t1", spec("Again"), "flow")
    assert again.version == 2
    assert (await service.get_version("t1", "flow", 1)).spec.display_name == "Flow"


async def test_list_pages_and_filters_by_label(service: WorkflowService) -> None:
    for i in range(5):
        await service.create("t1", spec(f"w{i}", team="a" if i % 2 else "b"), f"w{i}")
    page = await service.list("t1", 2, "", "")
    assert [w.id for w in page.items] == ["w0", "w1"] and page.next_page_token
    rest = await service.list("t1", 10, page.next_page_token, "")
    assert [w.id for w in rest.items] == ["w2", "w3", "w4"] and not rest.next_page_token
    team_a = await service.list("t1", 0, "", "labels.team=a")
    assert [w.id for w in team_a.items] == ["w1", "w3"]
    with pytest.raises(InvalidArgument, match="filter"):
        await service.list("t1", 0, "", "state=RUNNING")
    with pytest.raises(InvalidArgument, match="page_token"):
        await service.list("t1", 0, page.next_page_token, "labels.team=a")


async def test_schedules_follow_versions_and_keep_their_progress(
    service: WorkflowService, database: Database
) -> None:
    repository = WorkflowRepository(database)
    created = await service.create("t1", spec(), "flow")
    kept = created.spec.schedules[0]
    [due] = await repository.schedules()
    assert (due.tenant, due.workflow_id, due.schedule) == ("t1", "flow", kept)
    fired = datetime(2030, 1, 1, 2, tzinfo=UTC)
    assert await repository.advance_schedule(due, fired)
    assert not await repository.advance_schedule(due, fired - timedelta(days=1))
    added = Schedule(id="hourly", cron="0 * * * *", paused=True)
    await service.update(
        "t1", "flow", dataclasses.replace(spec(), schedules=[kept, added]), ["schedules"], ""
    )
    by_id = {d.schedule.id: d for d in await repository.schedules()}
    assert by_id[kept.id].last_fire_time == fired
    assert by_id["hourly"].schedule.paused and by_id["hourly"].last_fire_time is None
    # Dropping a schedule drops its row; deleting the workflow drops the rest.
    await service.update(
        "t1", "flow", dataclasses.replace(spec(), schedules=[added]), ["schedules"], ""
    )
    assert [d.schedule.id for d in await repository.schedules()] == ["hourly"]
    await service.delete("t1", "flow", "")
    assert await repository.schedules() == []
