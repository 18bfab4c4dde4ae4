"""Builtins registered at wiring time see who calls them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from aster.server.tools.builtins import BuiltinTool
from aster.server.tools.call_context import (
    ToolCallContext,
    current_tool_call,
    require_tool_call,
    tool_call_scope,
)
from aster.server.tools.service import ToolService

CALLER = ToolCallContext(
    tenant="t1", agent_id="ag-1", session_id="ses-1", run_id="run-1", tool_call_id="call-1"
)


async def _whoami(arguments: Mapping[str, Any], key: str) -> Any:
    caller = require_tool_call("whoami")
    return {"agent": caller.agent_id, "run": caller.run_id, "key": key}


WHOAMI = BuiltinTool("whoami", "Names the calling agent.", {"type": "object"}, _whoami)


async def test_a_registered_builtin_reads_its_caller(tools: ToolService) -> None:
    tools.register_builtin(WHOAMI)
    with tool_call_scope(CALLER):
        outcome = await tools.execute("t1", "whoami", {}, "k1")
    assert outcome.output == {"agent": "ag-1", "run": "run-1", "key": "k1"}
    assert current_tool_call() is None


async def test_outside_a_run_the_builtin_says_it_needs_an_agent(tools: ToolService) -> None:
    tools.register_builtin(WHOAMI)
    outcome = await tools.execute("t1", "whoami", {})
    assert outcome.output is None
    assert outcome.error == "'whoami' can only be called by an agent during a run"


async def test_registered_builtins_are_listed_for_every_tenant(tools: ToolService) -> None:
    tools.register_builtin(WHOAMI)
    assert (await tools.get("another-tenant", "whoami")).definition.name == "whoami"


def test_a_builtin_id_cannot_be_registered_twice(tools: ToolService) -> None:
    tools.register_builtin(WHOAMI)
    with pytest.raises(ValueError, match="already registered"):
        tools.register_builtin(WHOAMI)
