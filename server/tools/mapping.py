"""Tool messages ⇄ tool domain types."""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2

from aster.server.rpc.convert import dict_to_struct, struct_to_dict, timestamp, to_timedelta
from aster.server.tools.models import (
    HttpToolConfig,
    SecretRef,
    Tool,
    ToolDefinition,
    ToolKind,
    ToolOutcome,
)
from aster.v1 import tool_pb2

_KIND_TO_PROTO = {
    ToolKind.UNSPECIFIED: tool_pb2.TOOL_KIND_UNSPECIFIED,
    ToolKind.BUILTIN: tool_pb2.TOOL_KIND_BUILTIN,
    ToolKind.HTTP: tool_pb2.TOOL_KIND_HTTP,
}
_KIND_FROM_PROTO = {v: k for k, v in _KIND_TO_PROTO.items()}

# Fields of Tool that the server owns; an empty update mask ignores them.
OUTPUT_FIELDS = frozenset({"id", "etag", "create_time", "update_time"})
# Integers above this are not exactly representable as the doubles of a Struct.
_MAX_EXACT = 2**53


def json_numbers(value: Any) -> Any:
    """`value` (from a Struct, where every number is a double) with
    integral numbers as ints, so `{"n": 3}` stays 3 rather than 3.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_EXACT:
        return int(value)
    if isinstance(value, dict):
        return {k: json_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_numbers(v) for v in value]
    return value


def arguments_from_proto(message: struct_pb2.Struct) -> dict[str, Any]:
    """The arguments of an ExecuteToolRequest as JSON."""
    result: dict[str, Any] = json_numbers(struct_to_dict(message, "arguments"))
    return result


def definition_from_proto(message: tool_pb2.Tool) -> ToolDefinition:
    """The caller-settable fields of `message`."""
    http = HttpToolConfig()
    if message.HasField("http"):
        config = message.http
        http = HttpToolConfig(
            url=config.url,
            method=config.method,
            headers={
                name: SecretRef(env=ref.env, file=ref.file) for name, ref in config.headers.items()
            },
            timeout=(
                to_timedelta(config.timeout, "tool.http.timeout")
                if config.HasField("timeout")
                else None
            ),
            max_response_bytes=config.max_response_bytes,
        )
    return ToolDefinition(
        name=message.name,
        description=message.description,
        parameters=json_numbers(struct_to_dict(message.parameters, "tool.parameters")),
        kind=_KIND_FROM_PROTO.get(message.kind, ToolKind.UNSPECIFIED),
        http=http,
        labels=dict(message.labels),
        metadata=struct_to_dict(message.metadata, "tool.metadata"),
    )


def set_fields(message: tool_pb2.Tool) -> list[str]:
    """The implied update mask: every caller-settable field `message` sets,
    with `http` expanded to the http fields it sets, so a body with only
    `http.timeout` changes only the timeout."""
    paths = []
    for field, _ in message.ListFields():
        if field.name == "http":
            paths += [f"http.{sub.name}" for sub, _ in message.http.ListFields()]
        elif field.name not in OUTPUT_FIELDS:
            paths.append(field.name)
    return paths


def tool_to_proto(tool: Tool) -> tool_pb2.Tool:
    """The full message of a tool."""
    definition = tool.definition
    message = tool_pb2.Tool(
        id=tool.id,
        name=definition.name,
        description=definition.description,
        parameters=dict_to_struct(definition.parameters),
        kind=_KIND_TO_PROTO[definition.kind],
        labels=definition.labels,
        metadata=dict_to_struct(definition.metadata),
        create_time=timestamp(tool.create_time),
        update_time=timestamp(tool.update_time),
        etag=tool.etag,
    )
    if definition.kind is ToolKind.HTTP:
        http = definition.http
        message.http.url = http.url
        message.http.method = http.method
        message.http.max_response_bytes = http.max_response_bytes
        if http.timeout is not None:
            message.http.timeout.FromTimedelta(http.timeout)
        for name, ref in http.headers.items():
            if ref.env:
                message.http.headers[name].env = ref.env
            else:
                message.http.headers[name].file = ref.file
    return message


def outcome_to_proto(outcome: ToolOutcome) -> tool_pb2.ExecuteToolResponse:
    """The response of ExecuteTool: `output` on success, `error` otherwise."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(outcome.duration_s * 1e9))
    response = tool_pb2.ExecuteToolResponse(error=outcome.error, duration=duration)
    if not outcome.error:
        try:
            json_format.ParseDict(outcome.output, response.output)
        except (json_format.ParseError, TypeError, ValueError, OverflowError):
            response.ClearField("output")
            response.error = "the tool's output is not a JSON value"
    return response
