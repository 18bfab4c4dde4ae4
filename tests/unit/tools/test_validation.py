"""The rules of tool definitions, filters and arguments."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from aster.server.errors import InvalidArgument
from aster.server.tools.filters import parse_tool_filter
from aster.server.tools.models import HttpToolConfig, SecretRef, ToolDefinition, ToolKind
from aster.server.tools.validation import (
    argument_error,
    effective_max_response_bytes,
    effective_timeout,
    normalized,
    validate_tool_definition,
)

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
}


def weather(**changes: Any) -> ToolDefinition:
    definition = ToolDefinition(
        name="get_weather",
        description="Weather by city",
        parameters=WEATHER,
        kind=ToolKind.HTTP,
        http=HttpToolConfig(
            url="https://weather.example.com/v1",
            headers={"Authorization": SecretRef(env="WEATHER_TOKEN")},
        ),
        labels={"team": "ml"},
    )
    return dataclasses.replace(definition, **changes)


def http(**changes: Any) -> ToolDefinition:
    return weather(http=dataclasses.replace(weather().http, **changes))


def field_of(definition: ToolDefinition) -> str:
    with pytest.raises(InvalidArgument) as caught:
        validate_tool_definition(normalized(definition))
    assert caught.value.field
    assert caught.value.field in caught.value.message
    return caught.value.field


def test_a_good_definition_passes_and_method_defaults_to_post() -> None:
    validate_tool_definition(weather())
    assert normalized(weather()).http.method == "POST"
    assert normalized(http(method="get")).http.method == "GET"
    validate_tool_definition(weather(parameters={}))  # no arguments


@pytest.mark.parametrize("name", ["", "1abc", "has space", "dots.no", "x" * 65, "naïve", "a/b"])
def test_bad_names(name: str) -> None:
    assert field_of(weather(name=name)) == "tool.name"


@pytest.mark.parametrize("name", ["a", "Get-Weather_2", "x" * 64])
def test_good_names(name: str) -> None:
    validate_tool_definition(weather(name=name))


def test_description_length() -> None:
    assert field_of(weather(description="d" * 2001)) == "tool.description"


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "array"}, '"type": "object"'),
        ({"properties": {}}, '"type": "object"'),
        ({"type": "object", "properties": {"a": {"type": "strin"}}}, "not a valid JSON Schema"),
        ({"type": "object", "required": "city"}, "not a valid JSON Schema"),
        ({"type": "object", "minProperties": -1}, "not a valid JSON Schema"),
        ({"$schema": "https://example.com/mine", "type": "object"}, "unknown $schema"),
        ({"type": "object", "description": "x" * 70_000}, "at most"),
    ],
)
def test_bad_parameter_schemas(schema: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_tool_definition(weather(parameters=schema))
    assert caught.value.field == "tool.parameters"
    assert words in caught.value.message


def test_an_older_draft_is_accepted() -> None:
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", **WEATHER}
    validate_tool_definition(weather(parameters=schema))


def test_kind_is_required_and_builtin_cannot_be_defined() -> None:
    assert field_of(weather(kind=ToolKind.UNSPECIFIED)) == "tool.kind"
    assert field_of(weather(kind=ToolKind.BUILTIN)) == "tool.kind"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://example.com/x",
        "http://example.com/x",  # plain http only for the local machine
        "https://user:pw@example.com/",
        "https:///path-only",
        "example.com/x",
        "https://example.com:99999/",
        "https://exa mple.com/",
        "https://example.com/" + "p" * 3000,
    ],
)
def test_bad_urls(url: str) -> None:
    assert field_of(http(url=url)) == "tool.http.url"


@pytest.mark.parametrize(
    "url", ["https://example.com", "http://127.0.0.1:8000/x", "http://localhost/x"]
)
def test_good_urls(url: str) -> None:
    validate_tool_definition(http(url=url))


def test_method_timeout_and_size() -> None:
    assert field_of(http(method="TRACE")) == "tool.http.method"
    assert field_of(http(timeout=timedelta(0))) == "tool.http.timeout"
    assert field_of(http(timeout=timedelta(seconds=-1))) == "tool.http.timeout"
    assert field_of(http(timeout=timedelta(seconds=61))) == "tool.http.timeout"
    validate_tool_definition(http(timeout=timedelta(seconds=60)))
    assert field_of(http(max_response_bytes=-1)) == "tool.http.max_response_bytes"
    assert field_of(http(max_response_bytes=10 * 1024 * 1024 + 1)) == (
        "tool.http.max_response_bytes"
    )
    assert effective_timeout(HttpToolConfig()) == 10
    assert effective_timeout(HttpToolConfig(timeout=timedelta(seconds=2.5))) == 2.5
    assert effective_max_response_bytes(HttpToolConfig()) == 1024 * 1024
    assert effective_max_response_bytes(HttpToolConfig(max_response_bytes=5)) == 5


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"Bad Header": SecretRef(env="X")}, "tool.http.headers"),
        ({"Host": SecretRef(env="X")}, "tool.http.headers"),
        ({"Idempotency-Key": SecretRef(env="X")}, "tool.http.headers"),
        ({"X-Key": SecretRef()}, "tool.http.headers[X-Key]"),
        ({"X-Key": SecretRef(env="X", file="y")}, "tool.http.headers[X-Key]"),
        ({"X-Key": SecretRef(env="1BAD")}, "tool.http.headers[X-Key].env"),
        ({"X-Key": SecretRef(file="../etc/passwd")}, "tool.http.headers[X-Key].file"),
    ],
)
def test_bad_headers(headers: dict[str, SecretRef], field: str) -> None:
    assert field_of(http(headers=headers)) == field


def test_labels() -> None:
    assert field_of(weather(labels={"Bad": "x"})) == "tool.labels"
    assert field_of(weather(labels={"ok": "v" * 64})) == "tool.labels"


def test_filters() -> None:
    parsed = parse_tool_filter('kind=HTTP AND labels.team="ml ops" AND labels.tier:*')
    assert parsed.kind is ToolKind.HTTP
    assert parsed.labels_equal == (("team", "ml ops"),)
    assert parsed.labels_present == ("tier",)
    assert parse_tool_filter("kind=tool_kind_builtin").kind is ToolKind.BUILTIN
    assert parse_tool_filter("  ").kind is None
    for bad in ["kind=UNSPECIFIED", "kind=FTP", "name=x", "labels.team=ml OR kind=HTTP"]:
        with pytest.raises(InvalidArgument) as caught:
            parse_tool_filter(bad)
        assert caught.value.field == "filter"


def test_argument_errors_name_the_place() -> None:
    assert argument_error(WEATHER, {"city": "Paris", "days": 3}) == ""
    missing = argument_error(WEATHER, {"days": 3})
    assert "'city' is a required property" in missing
    wrong = argument_error(WEATHER, {"city": "Paris", "days": 0})
    assert "$.days" in wrong
    assert "minimum" in wrong or "less than" in wrong
    assert "must be a JSON object" in argument_error(WEATHER, ["Paris"])
    # no parameters: any object is accepted, anything else is not
    assert argument_error({}, {}) == ""
    assert argument_error({}, {"extra": 1}) == ""
    # a $ref that cannot be resolved is an error, not an exception
    ref = {"type": "object", "properties": {"a": {"$ref": "https://example.com/s.json"}}}
    assert "cannot be checked" in argument_error(ref, {"a": 1})
