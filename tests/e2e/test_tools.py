"""ToolService end to end: gRPC against the real server, REST through Envoy,
and an HTTP tool the server calls on a local endpoint."""

from __future__ import annotations

import uuid

import grpc
import httpx
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, json_format

from aster.server.rpc.convert import dict_to_struct
from aster.v1 import agent_pb2, tool_pb2, tool_pb2_grpc
from tests.rpc_errors import error_info, expect_error
from tests.unit.tools.conftest import Endpoint, endpoint, endpoint_server  # noqa: F401

Code = grpc.StatusCode
BUILTINS = ["calculator", "get_time", "http_request"]


@pytest.fixture
def tools(channel: grpc.aio.Channel) -> tool_pb2_grpc.ToolServiceStub:
    return tool_pb2_grpc.ToolServiceStub(channel)


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def http_tool(url: str, **fields: object) -> tool_pb2.Tool:
    values: dict[str, object] = {
        "name": "echo",
        "description": "Echoes its arguments",
        "kind": tool_pb2.TOOL_KIND_HTTP,
        "parameters": dict_to_struct(
            {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        ),
        "http": tool_pb2.HttpToolConfig(url=url),
        **fields,
    }
    return tool_pb2.Tool(**values)  # type: ignore[arg-type]


async def execute(
    tools: tool_pb2_grpc.ToolServiceStub, tool_id: str, key: str = "", **arguments: object
) -> tool_pb2.ExecuteToolResponse:
    return await tools.ExecuteTool(
        tool_pb2.ExecuteToolRequest(
            tool_id=tool_id, arguments=dict_to_struct(arguments), idempotency_key=key
        )
    )


async def test_crud_cycle_over_grpc(tools: tool_pb2_grpc.ToolServiceStub) -> None:
    team = unique("team")
    created = await tools.CreateTool(
        tool_pb2.CreateToolRequest(
            tool=http_tool(
                "https://echo.example.com/v1",
                labels={"team": team},
                http=tool_pb2.HttpToolConfig(
                    url="https://echo.example.com/v1",
                    headers={"Authorization": agent_pb2.SecretRef(env="ECHO_TOKEN")},
                    timeout=duration_pb2.Duration(seconds=5),
                ),
            )
        )
    )
    assert created.id.startswith("tool_")
    assert created.kind == tool_pb2.TOOL_KIND_HTTP
    assert created.http.method == "POST"
    assert created.http.headers["Authorization"].env == "ECHO_TOKEN"
    assert created.etag
    assert await tools.GetTool(tool_pb2.GetToolRequest(id=created.id)) == created

    updated = await tools.UpdateTool(
        tool_pb2.UpdateToolRequest(
            tool=tool_pb2.Tool(
                id=created.id,
                description="v2",
                http=tool_pb2.HttpToolConfig(max_response_bytes=4096),
                etag=created.etag,
            )
        )
    )
    assert (updated.description, updated.http.max_response_bytes) == ("v2", 4096)
    assert updated.http.url == "https://echo.example.com/v1"
    assert updated.http.timeout.seconds == 5
    stale = tool_pb2.Tool(id=created.id, description="v3", etag=created.etag)
    err = await expect_error(
        tools.UpdateTool(
            tool_pb2.UpdateToolRequest(
                tool=stale, update_mask=field_mask_pb2.FieldMask(paths=["description"])
            )
        ),
        Code.ABORTED,
    )
    assert error_info(err).reason == "ETAG_MISMATCH"

    listed = await tools.ListTools(tool_pb2.ListToolsRequest(filter=f"labels.team={team}"))
    assert [t.id for t in listed.tools] == [created.id]
    await tools.DeleteTool(tool_pb2.DeleteToolRequest(id=created.id, etag=updated.etag))
    await expect_error(tools.GetTool(tool_pb2.GetToolRequest(id=created.id)), Code.NOT_FOUND)


async def test_builtins_are_listed_first_and_are_read_only(
    tools: tool_pb2_grpc.ToolServiceStub,
) -> None:
    first = await tools.ListTools(tool_pb2.ListToolsRequest(page_size=2))
    second = await tools.ListTools(
        tool_pb2.ListToolsRequest(page_size=2, page_token=first.next_page_token)
    )
    assert [t.id for t in first.tools] + [t.id for t in second.tools][:1] == BUILTINS
    assert all(t.kind == tool_pb2.TOOL_KIND_BUILTIN for t in first.tools)
    await expect_error(
        tools.DeleteTool(tool_pb2.DeleteToolRequest(id="calculator")), Code.FAILED_PRECONDITION
    )
    err = await expect_error(
        tools.CreateTool(
            tool_pb2.CreateToolRequest(tool=http_tool("https://x.example"), tool_id="get_time")
        ),
        Code.ALREADY_EXISTS,
    )
    assert error_info(err).metadata["field"] == "tool_id"


@pytest.mark.parametrize(
    ("tool", "field"),
    [
        (
            http_tool("https://x.example", parameters=dict_to_struct({"type": "array"})),
            "tool.parameters",
        ),
        (http_tool("https://x.example", name="has space"), "tool.name"),
        (http_tool("http://x.example"), "tool.http.url"),
        (http_tool("https://x.example", kind=tool_pb2.TOOL_KIND_BUILTIN), "tool.kind"),
    ],
)
async def test_invalid_tools_name_the_field(
    tools: tool_pb2_grpc.ToolServiceStub, tool: tool_pb2.Tool, field: str
) -> None:
    err = await expect_error(
        tools.CreateTool(tool_pb2.CreateToolRequest(tool=tool)), Code.INVALID_ARGUMENT
    )
    assert error_info(err).metadata["field"] == field


async def test_execute_builtins(tools: tool_pb2_grpc.ToolServiceStub) -> None:
    result = await execute(tools, "calculator", expression="2*(3+4)")
    assert (result.output.number_value, result.error) == (14, "")
    now = await execute(tools, "get_time", timezone="Europe/Paris")
    assert now.output.string_value[:2] == "20"
    failed = await execute(tools, "calculator", expression="__import__('os')")
    assert failed.error and not failed.HasField("output")
    invalid = await execute(tools, "calculator")
    assert "'expression' is a required property" in invalid.error
    refused = await execute(tools, "http_request", url="https://example.com/")
    assert "egress allow-list" in refused.error
    err = await expect_error(execute(tools, unique("missing")), Code.NOT_FOUND)
    assert error_info(err).metadata["resource"] == "tool"


async def test_http_tool_is_called_with_the_idempotency_key(
    tools: tool_pb2_grpc.ToolServiceStub,
    endpoint: Endpoint,  # noqa: F811
) -> None:
    created = await tools.CreateTool(
        tool_pb2.CreateToolRequest(tool=http_tool(endpoint.url("/echo")))
    )
    key = unique("call")
    result = await execute(tools, created.id, key, city="Paris")
    assert result.error == ""
    assert json_format.MessageToDict(result.output)["json"] == {"city": "Paris"}
    assert endpoint.last().headers["idempotency-key"] == key
    again = await execute(tools, created.id, key, city="Paris")
    assert again.output == result.output
    assert len(endpoint.received) == 1
    failing = await tools.CreateTool(
        tool_pb2.CreateToolRequest(tool=http_tool(endpoint.url("/status/500")))
    )
    failed = await execute(tools, failing.id, city="Paris")
    assert "HTTP 500" in failed.error


async def test_rest_execute_and_errors(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/tools/calculator/execute", json={"arguments": {"expression": "2*(3+4)"}}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["output"] == 14
    assert body["error"] == ""
    assert body["duration"].endswith("s")
    failed = (
        await http.post("/v1/tools/calculator/execute", json={"arguments": {"expression": "1/0"}})
    ).json()
    assert "division by zero" in failed["error"]
    missing = await http.post(f"/v1/tools/{unique('nope')}/execute", json={"arguments": {}})
    assert missing.status_code == 404, missing.text
    assert missing.json()["code"] == 5
    bad_schema = await http.post(
        "/v1/tools",
        json={
            "name": "bad",
            "kind": "TOOL_KIND_HTTP",
            "parameters": {"type": "object", "required": "city"},
            "http": {"url": "https://x.example"},
        },
    )
    assert bad_schema.status_code == 400, bad_schema.text
    assert bad_schema.json()["details"][0]["metadata"]["field"] == "tool.parameters"
    builtin = (await http.get("/v1/tools/calculator")).json()
    assert builtin["kind"] == "TOOL_KIND_BUILTIN"
    listed = (await http.get("/v1/tools", params={"filter": "kind=BUILTIN"})).json()
    # The server's own builtins first, then those other areas register
    # (memory_get, memory_set, ...).
    listed_ids = [t["id"] for t in listed["tools"]]
    assert listed_ids[: len(BUILTINS)] == BUILTINS
    assert {"memory_delete", "memory_get", "memory_set"} <= set(listed_ids)
