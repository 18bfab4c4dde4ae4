"""Tool messages ⇄ domain types."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, json_format

from aster.server.rpc.convert import dict_to_struct
from aster.server.tools.mapping import (
    arguments_from_proto,
    definition_from_proto,
    outcome_to_proto,
    set_fields,
    tool_to_proto,
)
from aster.server.tools.models import (
    HttpToolConfig,
    SecretRef,
    Tool,
    ToolDefinition,
    ToolKind,
    ToolOutcome,
)
from aster.v1 import agent_pb2, tool_pb2


def test_round_trip_of_an_http_tool() -> None:
    definition = ToolDefinition(
        name="search",
        description="Searches",
        parameters={
            "type": "object",
            "properties": {"q": {"type": "string", "maxLength": 200}},
            "required": ["q"],
        },
        kind=ToolKind.HTTP,
        http=HttpToolConfig(
            url="https://search.example.com",
            method="GET",
            headers={"Authorization": SecretRef(env="TOKEN"), "X-Key": SecretRef(file="key")},
            timeout=timedelta(seconds=1.5),
            max_response_bytes=2048,
        ),
        labels={"team": "ml"},
        metadata={"owner": "ops"},
    )
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    message = tool_to_proto(Tool("search", definition, now, now, revision=3))
    assert message.kind == tool_pb2.TOOL_KIND_HTTP
    assert message.http.headers["X-Key"] == agent_pb2.SecretRef(file="key")
    assert message.http.timeout == duration_pb2.Duration(seconds=1, nanos=500_000_000)
    assert message.etag
    back = definition_from_proto(message)
    assert back == definition
    # maxLength comes back an int although a Struct holds doubles
    assert type(back.parameters["properties"]["q"]["maxLength"]) is int


def test_builtins_have_no_http_config() -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    message = tool_to_proto(
        Tool("calculator", ToolDefinition(name="calculator", kind=ToolKind.BUILTIN), epoch, epoch)
    )
    assert not message.HasField("http")
    assert message.kind == tool_pb2.TOOL_KIND_BUILTIN
    assert message.create_time.seconds == 0


def test_unset_values_map_to_defaults() -> None:
    definition = definition_from_proto(tool_pb2.Tool(name="x"))
    assert definition.kind is ToolKind.UNSPECIFIED
    assert definition.http == HttpToolConfig()
    assert definition.parameters == {}


def test_implied_update_mask_expands_http() -> None:
    message = tool_pb2.Tool(
        id="t",
        etag="e",
        description="d",
        http=tool_pb2.HttpToolConfig(timeout=duration_pb2.Duration(seconds=3)),
    )
    assert sorted(set_fields(message)) == ["description", "http.timeout"]


def test_arguments_keep_integers() -> None:
    arguments = arguments_from_proto(dict_to_struct({"n": 3, "x": 2.5, "l": [1, {"m": 2}]}))
    assert arguments == {"n": 3, "x": 2.5, "l": [1, {"m": 2}]}
    assert type(arguments["n"]) is int


def test_outcomes() -> None:
    done = outcome_to_proto(ToolOutcome({"a": [1, "b", None]}, "", 0.25))
    assert json_format.MessageToDict(done.output) == {"a": [1, "b", None]}
    assert done.duration == duration_pb2.Duration(nanos=250_000_000)
    assert done.error == ""
    number = outcome_to_proto(ToolOutcome(14, "", 0.0))
    assert number.output.number_value == 14
    failed = outcome_to_proto(ToolOutcome(None, "boom", 1.0))
    assert failed.error == "boom"
    assert not failed.HasField("output")
    odd = outcome_to_proto(ToolOutcome({1, 2}, "", 0.0))
    assert odd.error == "the tool's output is not a JSON value"
    assert not odd.HasField("output")
