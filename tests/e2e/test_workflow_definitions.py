"""Workflow definitions (Create/List/Get/Update/DeleteWorkflow) on the real
server and Envoy: gRPC and REST, versions, etags, update masks, bad
definitions naming the step, malformed JSON, tenants and credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import field_mask_pb2, json_format

from aster.v1 import agent_pb2, agent_pb2_grpc, workflow_pb2, workflow_pb2_grpc
from tests.auth_helpers import cli_key
from tests.processes import Ports, Process, start_edge, start_server
from tests.rpc_errors import error_info, expect_error

Code = grpc.StatusCode
TENANTS = ("wf-a", "wf-b")


@dataclass
class AuthStack:
    """A server and edge with API keys on, and a key of each tenant."""

    ports: Ports
    server: Process
    edge: Process
    keys: dict[str, str]

    def md(self, tenant: str) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.keys[tenant]),)


@pytest.fixture(scope="module")
def auth_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthStack]:
    data_dir = tmp_path_factory.mktemp("workflow-definitions")
    ports = Ports()
    env = {
        "ASTER_AUTH_MODE": "api_key",
        "ASTER_RATE_LIMIT_RPS": "1000",
        "ASTER_RATE_LIMIT_BURST": "1000",
    }
    keys = {t: cli_key(ports, data_dir, t, "admin", **env) for t in TENANTS}
    server = start_server(ports, data_dir, **env)
    try:
        edge = start_edge(ports, data_dir, **env)
    except BaseException:
        server.stop()
        raise
    yield AuthStack(ports, server, edge, keys)
    edge.stop()
    assert server.stop() == 0, server.log_tail()


@dataclass
class Client:
    workflows: workflow_pb2_grpc.WorkflowServiceAsyncStub
    agents: agent_pb2_grpc.AgentServiceAsyncStub
    http: httpx.AsyncClient
    md: tuple[tuple[str, str], ...]
    other_md: tuple[tuple[str, str], ...]
    other_http: httpx.AsyncClient


@pytest.fixture
async def client(auth_stack: AuthStack) -> AsyncIterator[Client]:
    base = f"http://127.0.0.1:{auth_stack.ports.http}"
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{auth_stack.ports.grpc}") as channel,
        httpx.AsyncClient(
            base_url=base, headers={"x-api-key": auth_stack.keys["wf-a"]}, timeout=20
        ) as http,
        httpx.AsyncClient(
            base_url=base, headers={"x-api-key": auth_stack.keys["wf-b"]}, timeout=20
        ) as other_http,
    ):
        yield Client(
            workflow_pb2_grpc.WorkflowServiceStub(channel),
            agent_pb2_grpc.AgentServiceStub(channel),
            http,
            auth_stack.md("wf-a"),
            auth_stack.md("wf-b"),
            other_http,
        )


def definition(agent_id: str) -> dict[str, Any]:
    """A workflow that asks an agent, calls a builtin tool, branches and
    asks for approval."""
    return {
        "display_name": "Review",
        "description": "Compute, ask, approve.",
        "labels": {"team": "ops"},
        "steps": [
            {
                "name": "compute",
                "next": "summarise",
                "tool": {"tool_id": "calculator", "arguments": {"expression": "{{ input.a }} * 2"}},
                "retry": {"max_attempts": 3, "initial_backoff": "1s", "backoff_multiplier": 2},
                "timeout": "10s",
            },
            {
                "name": "summarise",
                "next": "check",
                "agent": {"agent_id": agent_id, "input": "Result: {{ steps.compute.output }}"},
            },
            {
                "name": "check",
                "next": "approve",
                "condition": {
                    "expression": "steps.compute.output.result > 10",
                    "then_step": "pause",
                },
            },
            {"name": "pause", "wait": "1s"},
            {"name": "approve", "approval": {"prompt": "Ship it?"}},
        ],
        "schedules": [{"cron": "0 3 * * *", "time_zone": "Europe/Paris", "paused": True}],
    }


def as_message(data: dict[str, Any]) -> workflow_pb2.Workflow:
    message = workflow_pb2.Workflow()
    json_format.ParseDict(data, message)
    return message


async def make_agent(client: Client) -> str:
    agent = await client.agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="Summariser")),
        metadata=client.md,
    )
    return agent.id


async def test_crud_and_versions_over_grpc(client: Client) -> None:
    stub, md = client.workflows, client.md
    agent_id = await make_agent(client)
    created = await stub.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(workflow=as_message(definition(agent_id))), metadata=md
    )
    assert created.id.startswith("wf_") and created.version == 1 and created.etag
    assert [s.name for s in created.steps] == ["compute", "summarise", "check", "pause", "approve"]
    assert created.steps[0].retry.max_attempts == 3
    assert created.schedules[0].id.startswith("sch_") and created.schedules[0].paused
    got = await stub.GetWorkflow(workflow_pb2.GetWorkflowRequest(id=created.id), metadata=md)
    assert got == created

    # Update: a new version; the schedule id sent back is kept.
    patch = workflow_pb2.Workflow(id=created.id, display_name="Review v2", etag=created.etag)
    second = await stub.UpdateWorkflow(
        workflow_pb2.UpdateWorkflowRequest(
            workflow=patch, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
        ),
        metadata=md,
    )
    assert second.version == 2 and second.display_name == "Review v2"
    assert second.steps == created.steps and second.schedules == created.schedules
    assert second.create_time == created.create_time and second.etag != created.etag
    latest = await stub.GetWorkflow(workflow_pb2.GetWorkflowRequest(id=created.id), metadata=md)
    assert latest.version == 2

    # An empty mask takes the fields the message sets.
    third = await stub.UpdateWorkflow(
        workflow_pb2.UpdateWorkflowRequest(
            workflow=workflow_pb2.Workflow(id=created.id, description="Now with a description")
        ),
        metadata=md,
    )
    assert third.version == 3 and third.display_name == "Review v2"

    # A stale etag is ABORTED, for Update and Delete.
    err = await expect_error(
        stub.UpdateWorkflow(workflow_pb2.UpdateWorkflowRequest(workflow=patch), metadata=md),
        Code.ABORTED,
    )
    assert error_info(err).reason == "ETAG_MISMATCH"
    await expect_error(
        stub.DeleteWorkflow(
            workflow_pb2.DeleteWorkflowRequest(id=created.id, etag=created.etag), metadata=md
        ),
        Code.ABORTED,
    )
    # A mask path that cannot change.
    err = await expect_error(
        stub.UpdateWorkflow(
            workflow_pb2.UpdateWorkflowRequest(
                workflow=workflow_pb2.Workflow(id=created.id),
                update_mask=field_mask_pb2.FieldMask(paths=["version"]),
            ),
            metadata=md,
        ),
        Code.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "update_mask"

    listed = await stub.ListWorkflows(
        workflow_pb2.ListWorkflowsRequest(filter="labels.team=ops"), metadata=md
    )
    assert created.id in [w.id for w in listed.workflows]

    await stub.DeleteWorkflow(
        workflow_pb2.DeleteWorkflowRequest(id=created.id, etag=third.etag), metadata=md
    )
    await expect_error(
        stub.GetWorkflow(workflow_pb2.GetWorkflowRequest(id=created.id), metadata=md),
        Code.NOT_FOUND,
    )


@pytest.mark.parametrize(
    ("change", "field", "step"),
    [
        (lambda d: d["steps"][4].update(next="compute"), "workflow.steps[4].next", "approve"),
        (lambda d: d["steps"][3].update(next="check"), "workflow.steps[3].next", "pause"),
        (lambda d: d["steps"][2].update(next="nowhere"), "workflow.steps[2].next", "check"),
        (
            lambda d: d["steps"][2]["condition"].update(expression="steps.compute.output >"),
            "workflow.steps[2].condition.expression",
            "check",
        ),
        (
            lambda d: d["steps"][1]["agent"].update(agent_id="no-such-agent"),
            "workflow.steps[1].agent.agent_id",
            "summarise",
        ),
        (
            lambda d: d["steps"][0]["tool"].update(tool_id="no_such_tool"),
            "workflow.steps[0].tool.tool_id",
            "compute",
        ),
        (
            lambda d: d["steps"][1]["agent"].update(input="{{ steps.compute.output "),
            "workflow.steps[1].agent.input",
            "summarise",
        ),
        (
            lambda d: d["steps"][0]["retry"].update(max_attempts=-1),
            "workflow.steps[0].retry.max_attempts",
            "compute",
        ),
        (lambda d: d["steps"][0].update(timeout="-1s"), "workflow.steps[0].timeout", "compute"),
        (
            lambda d: d["steps"][2].update(retry={"max_attempts": 2}),
            "workflow.steps[2].retry",
            "check",
        ),
        (
            lambda d: d["steps"][4].update(retry={"max_attempts": 2}),
            "workflow.steps[4].retry",
            "approve",
        ),
        (lambda d: d["steps"][3].update(timeout="5s"), "workflow.steps[3].timeout", "pause"),
    ],
    ids=[
        "cycle",
        "entered twice",
        "dangling",
        "bad expression",
        "unknown agent",
        "unknown tool",
        "bad template",
        "bad retry",
        "bad timeout",
        "retry on a condition",
        "retry on an approval",
        "timeout on a wait",
    ],
)
async def test_bad_definitions_name_the_step_over_grpc(
    client: Client, change: Any, field: str, step: str
) -> None:
    data = definition(await make_agent(client))
    change(data)
    err = await expect_error(
        client.workflows.CreateWorkflow(
            workflow_pb2.CreateWorkflowRequest(workflow=as_message(data)), metadata=client.md
        ),
        Code.INVALID_ARGUMENT,
    )
    info = error_info(err)
    assert info.reason == "INVALID_ARGUMENT"
    assert info.metadata["field"] == field, err.details()
    assert info.metadata["step"] == step, err.details()
    assert field in (err.details() or "")


def assert_error(response: httpx.Response, status: int, grpc_code: int, text: str = "") -> Any:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == grpc_code, body
    assert text in body["message"], body
    return body


async def test_crud_over_rest(client: Client) -> None:
    http = client.http
    agent_id = await make_agent(client)
    response = await http.post("/v1/workflows?workflow_id=rest-flow", json=definition(agent_id))
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["id"] == "rest-flow" and created["version"] == 1
    assert created["steps"][0]["tool"] == {
        "tool_id": "calculator",
        "arguments": {"expression": "{{ input.a }} * 2"},
    }
    assert created["steps"][3]["wait"] == "1s"

    fetched = (await http.get("/v1/workflows/rest-flow")).json()
    assert fetched == created

    updated = await http.patch(
        "/v1/workflows/rest-flow",
        params={"update_mask": "description,labels"},
        json={"description": "changed", "labels": {"team": "sre"}, "etag": created["etag"]},
    )
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["version"] == 2 and body["description"] == "changed"
    assert body["labels"] == {"team": "sre"} and body["steps"] == created["steps"]

    stale = await http.patch(
        "/v1/workflows/rest-flow", json={"description": "again", "etag": created["etag"]}
    )
    assert_error(stale, 409, 10, "etag")
    assert (await http.post("/v1/workflows", json=definition(agent_id))).status_code == 200
    page = (await http.get("/v1/workflows", params={"page_size": 1})).json()
    assert len(page["workflows"]) == 1 and page["next_page_token"]
    assert (
        await http.delete("/v1/workflows/rest-flow", params={"etag": body["etag"]})
    ).json() == {}
    assert_error(await http.get("/v1/workflows/rest-flow"), 404, 5, "rest-flow")


async def test_retry_and_timeout_are_refused_where_they_do_not_apply_over_rest(
    client: Client,
) -> None:
    data = definition(await make_agent(client))
    data["steps"][2]["retry"] = {"max_attempts": 3}
    body = assert_error(
        await client.http.post("/v1/workflows", json=data),
        400,
        3,
        "workflow.steps[2].retry (step 'check'): retry applies to agent and tool steps only, "
        "not to a condition step",
    )
    assert body["details"][0]["metadata"] == {"field": "workflow.steps[2].retry", "step": "check"}
    data = definition(await make_agent(client))
    data["steps"][3]["timeout"] = "2s"
    assert_error(
        await client.http.post("/v1/workflows", json=data), 400, 3, "a wait step takes no timeout"
    )
    # A timeout on a composite step or an approval is accepted.
    data = definition(await make_agent(client))
    data["steps"][2]["timeout"] = "3600s"
    data["steps"][4]["timeout"] = "86400s"
    response = await client.http.post("/v1/workflows", json=data)
    assert response.status_code == 200, response.text
    assert [s.get("timeout") for s in response.json()["steps"]] == [
        "10s",
        None,
        "3600s",
        None,
        "86400s",
    ]


async def test_a_bad_definition_over_rest_names_the_step(client: Client) -> None:
    data = definition(await make_agent(client))
    data["steps"][2]["condition"]["expression"] = "steps.ghost.output == 1"
    body = assert_error(await client.http.post("/v1/workflows", json=data), 400, 3, "ghost")
    metadata = body["details"][0]["metadata"]
    assert metadata["field"] == "workflow.steps[2].condition.expression"
    assert metadata["step"] == "check"


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (b"{not json", ""),
        (b'{"display_name": "x", "steps": "compute"}', "steps"),
        (b'{"display_name": "x", "steps": [{"name": "a", "wait": 5}]}', "wait"),
        (
            b'{"display_name": "x", "steps": [{"name": "a", "parallel": {"join": "SOMETIMES"}}]}',
            "join",
        ),
        (
            b'{"display_name": "x", "schedules": [{"cron": "* * * * *", "start_time": "soon"}]}',
            "start_time",
        ),
    ],
)
async def test_malformed_json_and_wrong_types_are_400(
    client: Client, content: bytes, text: str
) -> None:
    response = await client.http.post(
        "/v1/workflows", content=content, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, 3, text)


async def test_tenants_are_isolated(client: Client) -> None:
    agent_id = await make_agent(client)
    created = (await client.http.post("/v1/workflows", json=definition(agent_id))).json()
    workflow_id = created["id"]
    other = client.other_http
    assert_error(await other.get(f"/v1/workflows/{workflow_id}"), 404, 5)
    assert_error(
        await other.patch(f"/v1/workflows/{workflow_id}", json={"description": "mine now"}), 404, 5
    )
    assert_error(await other.delete(f"/v1/workflows/{workflow_id}"), 404, 5)
    listed = (await other.get("/v1/workflows")).json()
    assert workflow_id not in [w["id"] for w in listed["workflows"]]
    # Tenant B cannot use tenant A's agent in its own workflow.
    body = assert_error(
        await other.post("/v1/workflows", json=definition(agent_id)), 400, 3, "unknown agent"
    )
    assert body["details"][0]["metadata"]["step"] == "summarise"
    # The same id in tenant B is B's own workflow.
    single = {"display_name": "B's", "steps": [{"name": "only", "approval": {}}]}
    again = await other.post("/v1/workflows", params={"workflow_id": workflow_id}, json=single)
    assert again.status_code == 200, again.text
    assert (await client.http.get(f"/v1/workflows/{workflow_id}")).json()["etag"] == created["etag"]


async def test_credentials_are_required(auth_stack: AuthStack, client: Client) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{auth_stack.ports.http}") as anon:
        assert_error(await anon.get("/v1/workflows"), 401, 16)
    await expect_error(
        client.workflows.ListWorkflows(workflow_pb2.ListWorkflowsRequest()), Code.UNAUTHENTICATED
    )
