"""AgentService end to end over gRPC against the real server."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from aster.client import AsterClient
from aster.v1 import agent_pb2, agent_pb2_grpc, pool_pb2, pool_pb2_grpc, system_pb2, system_pb2_grpc
from tests.conftest import Stack
from tests.rpc_errors import error_info, expect_error

Code = grpc.StatusCode


@pytest.fixture
def agents(channel: grpc.aio.Channel) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(channel)


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create(
    agents: agent_pb2_grpc.AgentServiceStub, name: str = "Helper", **fields: object
) -> agent_pb2.Agent:
    agent = agent_pb2.Agent(display_name=name, **fields)  # type: ignore[arg-type]
    return await agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent))


async def test_full_crud_cycle(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"owner": "ops", "n": 3})
    created = await create(
        agents,
        "Support bot",
        instructions="Answer politely.",
        model=agent_pb2.ModelConfig(
            provider="openai",
            model="gpt-4o-mini",
            temperature=0.2,
            api_key=agent_pb2.SecretRef(env="OPENAI_API_KEY"),
        ),
        tools=["calculator"],
        labels={"team": "support"},
        metadata=metadata,
    )
    assert created.id.startswith("agt_")
    assert created.etag
    assert created.state == agent_pb2.AGENT_STATE_ACTIVE
    assert created.create_time.seconds > 0
    assert created.create_time == created.update_time

    fetched = await agents.GetAgent(agent_pb2.GetAgentRequest(id=created.id))
    assert fetched == created

    update = agent_pb2.Agent(id=created.id, display_name="Support bot v2", etag=created.etag)
    updated = await agents.UpdateAgent(
        agent_pb2.UpdateAgentRequest(
            agent=update, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
        )
    )
    assert updated.display_name == "Support bot v2"
    assert updated.instructions == "Answer politely."
    assert updated.model.temperature == pytest.approx(0.2)
    assert updated.etag != created.etag

    await agents.DeleteAgent(agent_pb2.DeleteAgentRequest(id=created.id, etag=updated.etag))
    await expect_error(agents.GetAgent(agent_pb2.GetAgentRequest(id=created.id)), Code.NOT_FOUND)


async def test_update_with_star_replaces_and_empty_mask_uses_set_fields(
    agents: agent_pb2_grpc.AgentServiceStub,
) -> None:
    created = await create(agents, "A", description="d", labels={"x": "1"})
    replaced = await agents.UpdateAgent(
        agent_pb2.UpdateAgentRequest(
            agent=agent_pb2.Agent(id=created.id, display_name="B"),
            update_mask=field_mask_pb2.FieldMask(paths=["*"]),
        )
    )
    assert (replaced.display_name, replaced.description, dict(replaced.labels)) == ("B", "", {})
    implied = await agents.UpdateAgent(
        agent_pb2.UpdateAgentRequest(agent=agent_pb2.Agent(id=created.id, description="new"))
    )
    assert (implied.display_name, implied.description) == ("B", "new")
    configured = await agents.UpdateAgent(
        agent_pb2.UpdateAgentRequest(
            agent=agent_pb2.Agent(
                id=created.id, model=agent_pb2.ModelConfig(provider="openai", model="m")
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["model"]),
        )
    )
    # An implied mask inside `model` touches only the model fields it sets.
    tuned = await agents.UpdateAgent(
        agent_pb2.UpdateAgentRequest(
            agent=agent_pb2.Agent(id=created.id, model=agent_pb2.ModelConfig(temperature=0.5))
        )
    )
    assert (tuned.model.provider, tuned.model.model) == ("openai", "m")
    assert tuned.model.temperature == 0.5
    assert configured.model.HasField("temperature") is False


async def test_proposed_id_and_already_exists(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    agent_id = unique("mine")
    agent = agent_pb2.Agent(display_name="Mine")
    created = await agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent, agent_id=agent_id))
    assert created.id == agent_id
    err = await expect_error(
        agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent, agent_id=agent_id)),
        Code.ALREADY_EXISTS,
    )
    assert agent_id in (err.details() or "")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="")),
            "agent.display_name",
        ),
        (agent_pb2.CreateAgentRequest(), "agent"),
        (
            agent_pb2.CreateAgentRequest(
                agent=agent_pb2.Agent(display_name="x", model=agent_pb2.ModelConfig(provider="gpt"))
            ),
            "agent.model.provider",
        ),
        (
            agent_pb2.CreateAgentRequest(
                agent=agent_pb2.Agent(display_name="x"), agent_id="Bad Id!"
            ),
            "agent_id",
        ),
    ],
)
async def test_create_validation_names_the_field(
    agents: agent_pb2_grpc.AgentServiceStub, request_: agent_pb2.CreateAgentRequest, field: str
) -> None:
    err = await expect_error(agents.CreateAgent(request_), Code.INVALID_ARGUMENT)
    info = error_info(err)
    assert info.reason == "INVALID_ARGUMENT"
    assert info.domain == "aster.dev"
    assert info.metadata["field"] == field
    assert field in (err.details() or "")


async def test_bad_ids_page_sizes_filters_and_masks(
    agents: agent_pb2_grpc.AgentServiceStub,
) -> None:
    err = await expect_error(
        agents.GetAgent(agent_pb2.GetAgentRequest(id="../etc")), Code.INVALID_ARGUMENT
    )
    assert error_info(err).metadata["field"] == "id"
    err = await expect_error(
        agents.ListAgents(agent_pb2.ListAgentsRequest(page_size=-5)), Code.INVALID_ARGUMENT
    )
    assert error_info(err).metadata["field"] == "page_size"
    err = await expect_error(
        agents.ListAgents(agent_pb2.ListAgentsRequest(filter="colour=red")), Code.INVALID_ARGUMENT
    )
    assert error_info(err).metadata["field"] == "filter"
    err = await expect_error(
        agents.ListAgents(agent_pb2.ListAgentsRequest(page_token="not-a-token")),
        Code.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "page_token"
    created = await create(agents)
    err = await expect_error(
        agents.UpdateAgent(
            agent_pb2.UpdateAgentRequest(
                agent=agent_pb2.Agent(id=created.id, display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["create_time"]),
            )
        ),
        Code.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "update_mask"
    assert "create_time" in (err.details() or "")


async def test_unknown_agent_is_not_found_everywhere(
    agents: agent_pb2_grpc.AgentServiceStub,
) -> None:
    missing = unique("missing")
    err = await expect_error(agents.GetAgent(agent_pb2.GetAgentRequest(id=missing)), Code.NOT_FOUND)
    assert error_info(err).metadata["id"] == missing
    await expect_error(agents.DeleteAgent(agent_pb2.DeleteAgentRequest(id=missing)), Code.NOT_FOUND)
    await expect_error(
        agents.UpdateAgent(
            agent_pb2.UpdateAgentRequest(
                agent=agent_pb2.Agent(id=missing, display_name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        ),
        Code.NOT_FOUND,
    )


async def test_stale_etag_is_aborted(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    created = await create(agents)
    mask = field_mask_pb2.FieldMask(paths=["display_name"])
    first = agent_pb2.Agent(id=created.id, display_name="first", etag=created.etag)
    await agents.UpdateAgent(agent_pb2.UpdateAgentRequest(agent=first, update_mask=mask))
    second = agent_pb2.Agent(id=created.id, display_name="second", etag=created.etag)
    err = await expect_error(
        agents.UpdateAgent(agent_pb2.UpdateAgentRequest(agent=second, update_mask=mask)),
        Code.ABORTED,
    )
    assert error_info(err).reason == "ETAG_MISMATCH"
    await expect_error(
        agents.DeleteAgent(agent_pb2.DeleteAgentRequest(id=created.id, etag=created.etag)),
        Code.ABORTED,
    )
    current = await agents.GetAgent(agent_pb2.GetAgentRequest(id=created.id))
    assert current.display_name == "first"


async def test_pagination_across_three_pages(agents: agent_pb2_grpc.AgentServiceStub) -> None:
    team = unique("team")
    created = [await create(agents, f"p{i}", labels={"team": team}) for i in range(7)]
    seen: list[str] = []
    token, pages = "", 0
    while True:
        page = await agents.ListAgents(
            agent_pb2.ListAgentsRequest(page_size=3, page_token=token, filter=f"labels.team={team}")
        )
        assert len(page.agents) <= 3
        seen += [a.id for a in page.agents]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [a.id for a in created]
    # A token only works with the filter it was issued for.
    first = await agents.ListAgents(
        agent_pb2.ListAgentsRequest(page_size=3, filter=f"labels.team={team}")
    )
    await expect_error(
        agents.ListAgents(
            agent_pb2.ListAgentsRequest(page_size=3, page_token=first.next_page_token)
        ),
        Code.INVALID_ARGUMENT,
    )


async def test_oversized_message_is_resource_exhausted(
    agents: agent_pb2_grpc.AgentServiceStub,
) -> None:
    huge = agent_pb2.Agent(display_name="big", instructions="x" * (5 * 1024 * 1024))
    await expect_error(
        agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=huge)), Code.RESOURCE_EXHAUSTED
    )


async def test_resume_agent_warms_a_pooled_agent(channel: grpc.aio.Channel) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    pools = pool_pb2_grpc.PoolServiceStub(channel)
    err = await expect_error(
        agents.ResumeAgent(agent_pb2.ResumeAgentRequest(id="agt_missing")), Code.NOT_FOUND
    )
    assert "agt_missing" in (err.details() or "")
    loose = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="not pooled"))
    )
    err = await expect_error(
        agents.ResumeAgent(agent_pb2.ResumeAgentRequest(id=loose.id)), Code.FAILED_PRECONDITION
    )
    assert "not in the pool" in (err.details() or "")
    pooled = await pools.CreatePooledAgent(
        pool_pb2.CreatePooledAgentRequest(agent=agent_pb2.Agent(display_name="pooled"))
    )
    status = await agents.ResumeAgent(agent_pb2.ResumeAgentRequest(id=pooled.agent_id))
    assert status.agent_id == pooled.agent_id
    assert status.activity == agent_pb2.AGENT_ACTIVITY_IDLE
    live = await pools.GetPoolAgent(pool_pb2.GetPoolAgentRequest(agent_id=pooled.agent_id))
    assert pool_pb2.PoolAgentState.Name(live.state) == "POOL_AGENT_STATE_LIVE"


async def test_system_info_stats_and_health(channel: grpc.aio.Channel) -> None:
    system = system_pb2_grpc.SystemServiceStub(channel)
    info = await system.GetInfo(system_pb2.GetInfoRequest())
    assert info.version
    assert info.storage_backend == "sqlite"
    assert info.event_bus == "in_process"
    assert "reflection" in info.features
    assert info.uptime.seconds >= 0
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    before = (await system.GetStats(system_pb2.GetStatsRequest())).resources["agents"]
    await create(agents)
    after = (await system.GetStats(system_pb2.GetStatsRequest())).resources["agents"]
    assert after == before + 1
    health = await system.GetHealth(system_pb2.GetHealthRequest())
    assert health.status == "healthy"
    assert health.checks["database"] == "ok"


async def test_python_client_helpers(stack: object, channel: grpc.aio.Channel) -> None:
    team = unique("team")
    async with AsterClient(channel=channel) as aster:
        made = [await aster.create_agent(f"c{i}", labels={"team": team}) for i in range(5)]
        listed = [a.id async for a in aster.iter_agents(filter=f"labels.team={team}", page_size=2)]
        assert listed == [a.id for a in made]
        renamed = await aster.update_agent(
            agent_pb2.Agent(id=made[0].id, display_name="renamed", etag=made[0].etag),
            ["display_name"],
        )
        assert renamed.display_name == "renamed"
        await aster.delete_agent(made[0].id, etag=renamed.etag)
        assert (await aster.info()).version


async def test_access_log_lines_are_json(
    stack: Stack, agents: agent_pb2_grpc.AgentServiceStub
) -> None:
    created = await create(agents, "logged")
    await agents.GetAgent(agent_pb2.GetAgentRequest(id=created.id))
    events = []
    for line in stack.server.log_path.read_text().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    rpcs = [e for e in events if e.get("event") == "rpc" and e.get("method") == "GetAgent"]
    assert rpcs, "no JSON access-log line for GetAgent"
    assert {"service", "code", "duration_ms", "timestamp", "level"} <= set(rpcs[-1])
    assert rpcs[-1]["code"] == "OK"
