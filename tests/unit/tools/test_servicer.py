"""ToolServicer on an in-process grpc.aio server with the error interceptor:
status codes, field names and ExecuteTool."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import field_mask_pb2

from aster.server.rpc.convert import dict_to_struct
from aster.server.rpc.error_interceptor import ErrorInterceptor
from aster.server.tools.service import ToolService
from aster.server.tools.servicer import ToolServicer
from aster.v1 import tool_pb2, tool_pb2_grpc
from tests.rpc_errors import error_info, expect_error

Code = grpc.StatusCode


@pytest.fixture
async def stub(tools: ToolService) -> AsyncIterator[tool_pb2_grpc.ToolServiceStub]:
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    tool_pb2_grpc.add_ToolServiceServicer_to_server(ToolServicer(tools), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield tool_pb2_grpc.ToolServiceStub(channel)
    await server.stop(0)


def echo_tool(**fields: object) -> tool_pb2.Tool:
    values: dict[str, object] = {
        "name": "echo",
        "kind": tool_pb2.TOOL_KIND_HTTP,
        "http": tool_pb2.HttpToolConfig(url="https://echo.example.com"),
        **fields,
    }
    return tool_pb2.Tool(**values)  # type: ignore[arg-type]


async def test_crud(stub: tool_pb2_grpc.ToolServiceStub) -> None:
    created = await stub.CreateTool(tool_pb2.CreateToolRequest(tool=echo_tool(), tool_id="echo"))
    assert created.http.method == "POST"
    assert created == await stub.GetTool(tool_pb2.GetToolRequest(id="echo"))
    updated = await stub.UpdateTool(
        tool_pb2.UpdateToolRequest(
            tool=tool_pb2.Tool(id="echo", description="Echoes", etag=created.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    )
    assert updated.description == "Echoes"
    listed = await stub.ListTools(tool_pb2.ListToolsRequest(filter="kind=HTTP"))
    assert [t.id for t in listed.tools] == ["echo"]
    await stub.DeleteTool(tool_pb2.DeleteToolRequest(id="echo", etag=updated.etag))
    await expect_error(stub.GetTool(tool_pb2.GetToolRequest(id="echo")), Code.NOT_FOUND)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (tool_pb2.CreateToolRequest(), "tool"),
        (tool_pb2.CreateToolRequest(tool=echo_tool(name="")), "tool.name"),
        (tool_pb2.CreateToolRequest(tool=echo_tool(kind=0)), "tool.kind"),
        (tool_pb2.CreateToolRequest(tool=echo_tool(kind=1)), "tool.kind"),
        (tool_pb2.CreateToolRequest(tool=echo_tool(http=None)), "tool.http.url"),
        (
            tool_pb2.CreateToolRequest(
                tool=echo_tool(parameters=dict_to_struct({"type": "object", "required": 3}))
            ),
            "tool.parameters",
        ),
        (tool_pb2.CreateToolRequest(tool=echo_tool(), tool_id="Bad Id"), "tool_id"),
    ],
)
async def test_create_errors_name_the_field(
    stub: tool_pb2_grpc.ToolServiceStub, request_: tool_pb2.CreateToolRequest, field: str
) -> None:
    err = await expect_error(stub.CreateTool(request_), Code.INVALID_ARGUMENT)
    assert error_info(err).metadata["field"] == field
    assert field in (err.details() or "")


async def test_builtins(stub: tool_pb2_grpc.ToolServiceStub) -> None:
    calculator = await stub.GetTool(tool_pb2.GetToolRequest(id="calculator"))
    assert calculator.kind == tool_pb2.TOOL_KIND_BUILTIN
    err = await expect_error(
        stub.CreateTool(tool_pb2.CreateToolRequest(tool=echo_tool(), tool_id="calculator")),
        Code.ALREADY_EXISTS,
    )
    assert error_info(err).metadata["field"] == "tool_id"
    await expect_error(
        stub.DeleteTool(tool_pb2.DeleteToolRequest(id="calculator")), Code.FAILED_PRECONDITION
    )
    await expect_error(
        stub.UpdateTool(
            tool_pb2.UpdateToolRequest(tool=tool_pb2.Tool(id="get_time", description="x"))
        ),
        Code.FAILED_PRECONDITION,
    )


async def test_execute(stub: tool_pb2_grpc.ToolServiceStub) -> None:
    reply = await stub.ExecuteTool(
        tool_pb2.ExecuteToolRequest(
            tool_id="calculator", arguments=dict_to_struct({"expression": "2*(3+4)"})
        )
    )
    assert reply.output.number_value == 14
    assert reply.error == ""
    failed = await stub.ExecuteTool(
        tool_pb2.ExecuteToolRequest(
            tool_id="calculator", arguments=dict_to_struct({"expression": "1/0"})
        )
    )
    assert "division by zero" in failed.error
    assert not failed.HasField("output")
    invalid = await stub.ExecuteTool(tool_pb2.ExecuteToolRequest(tool_id="calculator"))
    assert "'expression' is a required property" in invalid.error
    err = await expect_error(
        stub.ExecuteTool(tool_pb2.ExecuteToolRequest(tool_id="nope")), Code.NOT_FOUND
    )
    assert error_info(err).metadata["id"] == "nope"
    err = await expect_error(stub.ExecuteTool(tool_pb2.ExecuteToolRequest()), Code.INVALID_ARGUMENT)
    assert error_info(err).metadata["field"] == "tool_id"
