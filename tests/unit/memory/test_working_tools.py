"""The memory_get/memory_set/memory_delete builtins against the working
memory service (SQLite and PostgreSQL): scoping by the calling agent,
session, room or tenant, provenance of writes, errors as ToolErrors."""

from __future__ import annotations

from typing import Any

import pytest

from aster.server.agents.models import AgentSpec
from aster.server.agents.service import AgentService
from aster.server.memory.working_models import Scope
from aster.server.memory.working_service import ScopeChecker, WorkingMemoryService
from aster.server.memory.working_tools import WorkingMemoryTools
from aster.server.sessions.models import SessionSpec
from aster.server.sessions.service import SessionService
from aster.server.storage.agent_repository import AgentRepository
from aster.server.storage.database import Database
from aster.server.storage.session_repository import SessionRepository
from aster.server.storage.working_memory_repository import WorkingMemoryRepository
from aster.server.tools.builtins import BuiltinTool
from aster.server.tools.call_context import ToolCallContext, tool_call_scope
from aster.server.tools.models import ToolError
from tests.unit.storage.conftest import database  # noqa: F401 - the shared fixture


@pytest.fixture
async def setup(
    database: Database,  # noqa: F811 - the imported fixture
) -> tuple[WorkingMemoryService, dict[str, BuiltinTool], ToolCallContext]:
    agents = AgentService(AgentRepository(database))
    sessions = SessionService(SessionRepository(database), agents)
    service = WorkingMemoryService(
        WorkingMemoryRepository(database), ScopeChecker(agents, sessions), max_value_bytes=64
    )
    agent = await agents.create("t1", AgentSpec(display_name="A"))
    session = await sessions.create("t1", SessionSpec(agent_id=agent.id))
    caller = ToolCallContext(
        tenant="t1",
        agent_id=agent.id,
        session_id=session.id,
        run_id="run_1",
        tool_call_id="call_0_0",
    )
    tools = {tool.id: tool for tool in WorkingMemoryTools(service).tools()}
    return service, tools, caller


async def call(tool: BuiltinTool, caller: ToolCallContext, **arguments: Any) -> Any:
    with tool_call_scope(caller):
        return await tool.run(arguments, "")


async def test_set_get_delete_in_the_agents_scope(
    setup: tuple[WorkingMemoryService, dict[str, BuiltinTool], ToolCallContext],
) -> None:
    service, tools, caller = setup
    stored = await call(tools["memory_set"], caller, key="city", value={"name": "Oslo"})
    assert stored["key"] == "city" and stored["etag"] and "value" not in stored
    got = await call(tools["memory_get"], caller, key="city")
    assert got == {"found": True, **stored, "value": {"name": "Oslo"}}
    entry = await service.find("t1", Scope(agent_id=caller.agent_id), "city")
    assert entry is not None
    assert (entry.writer.agent_id, entry.writer.session_id) == (caller.agent_id, caller.session_id)
    assert (entry.writer.run_id, entry.writer.tool_call_id) == ("run_1", "call_0_0")
    # compare-and-set through the tool
    with pytest.raises(ToolError, match="does not match"):
        await call(tools["memory_set"], caller, key="city", value=1, etag="stale")
    assert await call(tools["memory_delete"], caller, key="city") == {
        "deleted": True,
        "key": "city",
    }
    assert await call(tools["memory_get"], caller, key="city") == {"found": False, "key": "city"}
    assert (await call(tools["memory_delete"], caller, key="city"))["deleted"] is False


async def test_scopes_are_chosen_by_the_caller(
    setup: tuple[WorkingMemoryService, dict[str, BuiltinTool], ToolCallContext],
) -> None:
    service, tools, caller = setup
    for scope in ("agent", "session", "tenant"):
        await call(tools["memory_set"], caller, key="k", value=scope, scope=scope, ttl_seconds=60)
    for scope in ("agent", "session", "tenant"):
        assert (await call(tools["memory_get"], caller, key="k", scope=scope))["value"] == scope
    assert (await service.find("t1", Scope(session_id=caller.session_id), "k")).value == "session"  # type: ignore[union-attr]
    assert (await service.find("t1", Scope(), "k")).value == "tenant"  # type: ignore[union-attr]
    with pytest.raises(ToolError, match="not in one"):
        await call(tools["memory_get"], caller, key="k", scope="room")
    in_room = ToolCallContext(**{**caller.__dict__, "room_id": "room-1"})
    await call(tools["memory_set"], in_room, key="k", value="room", scope="room")
    assert (await service.find("t1", Scope(room_id="room-1"), "k")).value == "room"  # type: ignore[union-attr]
    # another tenant's caller sees none of it
    other = ToolCallContext(**{**caller.__dict__, "tenant": "t2"})
    assert (await call(tools["memory_get"], other, key="k", scope="tenant"))["found"] is False
    with pytest.raises(ToolError, match="not found"):
        await call(tools["memory_get"], other, key="k")


async def test_errors_are_tool_errors(
    setup: tuple[WorkingMemoryService, dict[str, BuiltinTool], ToolCallContext],
) -> None:
    _, tools, caller = setup
    with pytest.raises(ToolError, match=r"entry\.key"):
        await call(tools["memory_set"], caller, key="bad key", value=1)
    with pytest.raises(ToolError, match=r"entry\.value"):
        await call(tools["memory_set"], caller, key="big", value="x" * 100)
    with pytest.raises(ToolError, match="during a run"):
        await tools["memory_get"].run({"key": "k"}, "")
