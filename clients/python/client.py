"""AsterClient: one grpc.aio channel, a stub per service, and a few helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType

import grpc
from google.protobuf import field_mask_pb2

from aster.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    memory_pb2_grpc,
    pool_pb2_grpc,
    room_pb2_grpc,
    session_pb2_grpc,
    system_pb2,
    system_pb2_grpc,
    tool_pb2_grpc,
    workflow_pb2_grpc,
)

DEFAULT_TARGET = "localhost:50051"


class AsterClient:
    """A connection to an Aster server.

    The stubs (`agents`, `sessions`, `pools`, `rooms`, `memory`, `workflows`,
    `tools`, `system`) expose every RPC; the methods below cover common calls.
    Errors surface as `grpc.aio.AioRpcError` with the server's status code."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        api_key: str | None = None,
        channel: grpc.aio.Channel | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        self._owns_channel = channel is None
        self.channel = channel or grpc.aio.insecure_channel(target)
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = (("x-api-key", api_key),) if api_key else ()
        self.agents = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.sessions = session_pb2_grpc.SessionServiceStub(self.channel)
        self.pools = pool_pb2_grpc.PoolServiceStub(self.channel)
        self.rooms = room_pb2_grpc.RoomServiceStub(self.channel)
        self.memory = memory_pb2_grpc.MemoryServiceStub(self.channel)
        self.workflows = workflow_pb2_grpc.WorkflowServiceStub(self.channel)
        self.tools = tool_pb2_grpc.ToolServiceStub(self.channel)
        self.system = system_pb2_grpc.SystemServiceStub(self.channel)

    async def __aenter__(self) -> AsterClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel if this client opened it."""
        if self._owns_channel:
            await self.channel.close(None)

    async def create_agent(
        self,
        display_name: str,
        *,
        instructions: str = "",
        description: str = "",
        provider: str = "scripted",
        model: str = "",
        tools: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        agent_id: str = "",
    ) -> agent_pb2.Agent:
        """Creates an agent and returns it with its id and etag."""
        agent = agent_pb2.Agent(
            display_name=display_name,
            description=description,
            instructions=instructions,
            model=agent_pb2.ModelConfig(provider=provider, model=model),
            tools=list(tools),
            labels=dict(labels or {}),
        )
        request = agent_pb2.CreateAgentRequest(agent=agent, agent_id=agent_id)
        return await self.agents.CreateAgent(request, timeout=self.timeout, metadata=self._metadata)

    async def get_agent(self, agent_id: str) -> agent_pb2.Agent:
        """One agent."""
        request = agent_pb2.GetAgentRequest(id=agent_id)
        return await self.agents.GetAgent(request, timeout=self.timeout, metadata=self._metadata)

    async def update_agent(
        self, agent: agent_pb2.Agent, paths: Sequence[str], *, check_etag: bool = True
    ) -> agent_pb2.Agent:
        """Updates the fields in `paths`; with `check_etag`, fails with
        ABORTED if the agent changed since `agent` was read."""
        sent = agent_pb2.Agent()
        sent.CopyFrom(agent)
        if not check_etag:
            sent.etag = ""
        request = agent_pb2.UpdateAgentRequest(
            agent=sent, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        )
        return await self.agents.UpdateAgent(request, timeout=self.timeout, metadata=self._metadata)

    async def delete_agent(self, agent_id: str, *, etag: str = "") -> None:
        """Deletes an agent (only at `etag`, if given)."""
        request = agent_pb2.DeleteAgentRequest(id=agent_id, etag=etag)
        await self.agents.DeleteAgent(request, timeout=self.timeout, metadata=self._metadata)

    async def iter_agents(
        self, *, filter: str = "", page_size: int = 100
    ) -> AsyncIterator[agent_pb2.Agent]:
        """Every agent matching `filter`, following page tokens."""
        token = ""
        while True:
            request = agent_pb2.ListAgentsRequest(
                page_size=page_size, page_token=token, filter=filter
            )
            page = await self.agents.ListAgents(
                request, timeout=self.timeout, metadata=self._metadata
            )
            for agent in page.agents:
                yield agent
            token = page.next_page_token
            if not token:
                return

    async def info(self) -> system_pb2.SystemInfo:
        """The server's version, uptime and backends."""
        return await self.system.GetInfo(
            system_pb2.GetInfoRequest(), timeout=self.timeout, metadata=self._metadata
        )
