"""Helpers for run and chat tests: scripted agents, event collection, SSE."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from google.protobuf import json_format, struct_pb2

from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2


def words(count: int, prefix: str = "w") -> str:
    """A text of `count` distinct words."""
    return " ".join(f"{prefix}{i}" for i in range(count))


async def scripted_agent(
    agents: agent_pb2_grpc.AgentServiceStub,
    *,
    script: list[dict[str, Any]] | None = None,
    delay_ms: float = 0,
    tools: list[str] | None = None,
    instructions: str = "",
    extra: dict[str, Any] | None = None,
) -> agent_pb2.Agent:
    """An agent on the scripted provider."""
    params = struct_pb2.Struct()
    values: dict[str, Any] = {"token_delay_ms": delay_ms, **(extra or {})}
    if script is not None:
        values["script"] = script
    params.update(values)
    agent = agent_pb2.Agent(
        display_name=f"scripted-{uuid.uuid4().hex[:6]}",
        instructions=instructions,
        model=agent_pb2.ModelConfig(provider="scripted", params=params),
        tools=tools or [],
    )
    return await agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent))


def text_of(events: list[run_pb2.ChatEvent]) -> str:
    """The concatenated text deltas of the last attempt."""
    return "".join(e.text_delta.delta for e in events if e.WhichOneof("event") == "text_delta")


def kinds(events: list[run_pb2.ChatEvent]) -> list[str]:
    """The event kinds in order."""
    return [str(e.WhichOneof("event")) for e in events]


def assert_sequence(events: list[run_pb2.ChatEvent], start: int = 1) -> None:
    """seq grows by one from `start`; every event names its run and session."""
    assert [e.seq for e in events] == list(range(start, start + len(events)))
    assert len({e.run_id for e in events}) == 1
    assert all(e.session_id for e in events)


async def sse_events(
    http: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> AsyncIterator[dict[str, Any]]:
    """The JSON of each `data:` event of an SSE response."""
    async with http.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                yield json.loads(line[len("data:") :])


def event_from_json(data: dict[str, Any]) -> run_pb2.ChatEvent:
    """A ChatEvent from the edge's JSON."""
    return json_format.ParseDict(data, run_pb2.ChatEvent(), ignore_unknown_fields=False)
