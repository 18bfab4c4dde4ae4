"""ToolService.execute: argument checks, builtins, HTTP tools against a
local server, failures as outcomes, idempotency."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from aster.server.errors import InvalidArgument, NotFound
from aster.server.storage.database import Database
from aster.server.storage.tool_repository import ToolRepository
from aster.server.tools.http_executor import EnvOrFileSecrets
from aster.server.tools.models import HttpToolConfig, SecretRef, ToolDefinition, ToolKind
from aster.server.tools.service import ToolService
from tests.unit.tools.conftest import SLOW_S, Endpoint

ECHO_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}


def http_tool(url: str, **config: object) -> ToolDefinition:
    return ToolDefinition(
        name="echo",
        parameters=ECHO_PARAMETERS,
        kind=ToolKind.HTTP,
        http=HttpToolConfig(url=url, **config),  # type: ignore[arg-type]
    )


async def test_builtins_run(tools: ToolService) -> None:
    outcome = await tools.execute("t1", "calculator", {"expression": "2*(3+4)"})
    assert (outcome.output, outcome.error) == (14, "")
    assert 0 <= outcome.duration_s < 1
    now = await tools.execute("t1", "get_time", {"timezone": "Asia/Tokyo"})
    assert datetime.fromisoformat(now.output).utcoffset() == timedelta(hours=9)
    assert (await tools.execute("t1", "get_time", {})).output.endswith("+00:00")


async def test_tool_failures_are_outcomes(tools: ToolService) -> None:
    unsafe = await tools.execute("t1", "calculator", {"expression": "__import__('os')"})
    assert unsafe.output is None
    assert "not an available function" in unsafe.error
    zone = await tools.execute("t1", "get_time", {"timezone": "Nowhere/Else"})
    assert "unknown timezone" in zone.error


async def test_arguments_are_checked_against_the_schema(tools: ToolService) -> None:
    missing = await tools.execute("t1", "calculator", {})
    assert missing.output is None
    assert "'expression' is a required property" in missing.error
    typed = await tools.execute("t1", "calculator", {"expression": 5})
    assert "$.expression" in typed.error
    extra = await tools.execute("t1", "get_time", {"timezone": "UTC", "format": "x"})
    assert "Additional properties are not allowed" in extra.error
    too_long = await tools.execute("t1", "calculator", {"expression": "1+" * 300 + "1"})
    assert "too long" in too_long.error


async def test_only_unknown_or_malformed_ids_raise(tools: ToolService) -> None:
    with pytest.raises(NotFound) as unknown:
        await tools.execute("t1", "no-such-tool", {})
    assert unknown.value.metadata == {"resource": "tool", "id": "no-such-tool"}
    with pytest.raises(InvalidArgument) as malformed:
        await tools.execute("t1", "Bad Id", {})
    assert malformed.value.field == "tool_id"
    with pytest.raises(InvalidArgument) as key:
        await tools.execute("t1", "calculator", {"expression": "1"}, "line\nbreak")
    assert key.value.field == "idempotency_key"


async def test_http_tool_posts_json_with_secret_headers_and_idempotency_key(
    sqlite_database: Database,
    endpoint: Endpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASTER_TEST_TOOL_TOKEN", "Bearer s3cret")
    (tmp_path / "api-key").write_text("file-secret\n")
    tools = ToolService(ToolRepository(sqlite_database), secrets=EnvOrFileSecrets(tmp_path))
    definition = http_tool(
        endpoint.url("/echo"),
        headers={
            "Authorization": SecretRef(env="ASTER_TEST_TOOL_TOKEN"),
            "X-Api-Key": SecretRef(file="api-key"),
        },
    )
    tool = await tools.create("t1", definition)
    outcome = await tools.execute("t1", tool.id, {"city": "Paris", "days": 2}, "run-1:call-1")
    assert outcome.error == ""
    assert outcome.output == {"method": "POST", "query": {}, "json": {"city": "Paris", "days": 2}}
    received = endpoint.last()
    assert received.headers["authorization"] == "Bearer s3cret"
    assert received.headers["x-api-key"] == "file-secret"
    assert received.headers["idempotency-key"] == "run-1:call-1"
    assert received.headers["content-type"] == "application/json"
    # without a key, no header
    await tools.execute("t1", tool.id, {"city": "Oslo"})
    assert "idempotency-key" not in endpoint.last().headers


async def test_missing_secrets_fail_the_call_without_leaking(
    sqlite_database: Database, endpoint: Endpoint, tmp_path: Path
) -> None:
    tools = ToolService(ToolRepository(sqlite_database), secrets=EnvOrFileSecrets(tmp_path))
    definition = http_tool(
        endpoint.url("/echo"), headers={"Authorization": SecretRef(env="ASTER_TEST_UNSET_VAR")}
    )
    tool = await tools.create("t1", definition)
    outcome = await tools.execute("t1", tool.id, {"city": "Paris"})
    assert "header 'Authorization' is unavailable" in outcome.error
    assert "ASTER_TEST_UNSET_VAR" in outcome.error
    assert endpoint.received == []


async def test_http_get_sends_arguments_as_query(tools: ToolService, endpoint: Endpoint) -> None:
    tool = await tools.create("t1", http_tool(endpoint.url("/echo"), method="GET"))
    outcome = await tools.execute("t1", tool.id, {"city": "Paris", "days": 3})
    assert outcome.output == {
        "method": "GET",
        "query": {"city": "Paris", "days": "3"},
        "json": None,
    }
    assert endpoint.last().body == b""


async def test_http_errors_timeouts_and_size_caps(tools: ToolService, endpoint: Endpoint) -> None:
    async def run(path: str, **config: object) -> str:
        tool = await tools.create("t1", http_tool(endpoint.url(path), **config))
        outcome = await tools.execute("t1", tool.id, {"city": "Paris"})
        assert outcome.output is None
        return outcome.error

    assert await run("/status/500") == 'the endpoint answered HTTP 500: {"problem": "bad things"}'
    assert "HTTP 302 (redirects are not followed)" in await run("/redirect")
    started = time.monotonic()
    assert "timed out after 0.3s" in await run("/slow", timeout=timedelta(seconds=0.3))
    assert time.monotonic() - started < SLOW_S - 1
    assert "larger than the limit of 100 bytes" in await run(
        "/big?bytes=101", max_response_bytes=100
    )
    assert "larger than the limit of 100 bytes" in await run(
        "/big?bytes=5000&chunked=1", max_response_bytes=100
    )
    at_cap = await tools.create(
        "t1", http_tool(endpoint.url("/big?bytes=100"), max_response_bytes=100)
    )
    assert (await tools.execute("t1", at_cap.id, {"city": "x"})).output == "x" * 100


async def test_unreachable_endpoints_fail_cleanly(tools: ToolService) -> None:
    tool = await tools.create("t1", http_tool("http://127.0.0.1:9/nothing"))
    outcome = await tools.execute("t1", tool.id, {"city": "Paris"})
    assert outcome.error.startswith("the request to 127.0.0.1 failed")


async def test_text_responses_are_strings(tools: ToolService, endpoint: Endpoint) -> None:
    tool = await tools.create("t1", http_tool(endpoint.url("/text")))
    assert (await tools.execute("t1", tool.id, {"city": "x"})).output == "plain words"


async def test_idempotency_key_returns_the_first_result(
    tools: ToolService, endpoint: Endpoint
) -> None:
    tool = await tools.create("t1", http_tool(endpoint.url("/echo")))
    first = await tools.execute("t1", tool.id, {"city": "Paris"}, "k1")
    again = await tools.execute("t1", tool.id, {"city": "Paris"}, "k1")
    assert again == first
    assert len(endpoint.received) == 1
    # concurrent calls with one key share one call
    results = await asyncio.gather(
        *(tools.execute("t1", tool.id, {"city": "Rome"}, "k2") for _ in range(5))
    )
    assert all(r == results[0] for r in results)
    assert len(endpoint.received) == 2
    # the same key with other arguments is refused; other tenants are separate
    other = await tools.execute("t1", tool.id, {"city": "Oslo"}, "k1")
    assert "other arguments" in other.error
    await tools.create("t2", http_tool(endpoint.url("/echo")), proposed_id=tool.id)
    await tools.execute("t2", tool.id, {"city": "Paris"}, "k1")
    assert len(endpoint.received) == 3


async def test_failures_are_not_remembered(tools: ToolService, endpoint: Endpoint) -> None:
    tool = await tools.create("t1", http_tool(endpoint.url("/status/503")))
    for _ in range(2):
        outcome = await tools.execute("t1", tool.id, {"city": "Paris"}, "retry-me")
        assert "HTTP 503" in outcome.error
    assert len(endpoint.received) == 2


async def test_http_request_builtin_follows_the_allow_list(
    sqlite_database: Database, endpoint: Endpoint
) -> None:
    closed = ToolService(ToolRepository(sqlite_database))
    refused = await closed.execute("t1", "http_request", {"url": endpoint.url("/echo")})
    assert "disabled" in refused.error
    assert endpoint.received == []
    open_ = ToolService(ToolRepository(sqlite_database), egress_allow_hosts="127.0.0.1")
    allowed = await open_.execute(
        "t1", "http_request", {"url": endpoint.url("/echo"), "method": "PUT", "body": {"a": 1}}
    )
    assert allowed.error == ""
    assert allowed.output["status"] == 200
    assert allowed.output["body"]["json"] == {"a": 1}
    other = ToolService(ToolRepository(sqlite_database), egress_allow_hosts=["example.com"])
    elsewhere = await other.execute("t1", "http_request", {"url": endpoint.url("/echo")})
    assert "not on this server's egress allow-list" in elsewhere.error
