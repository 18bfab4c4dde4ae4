"""One agent reply in a room: the same provider registry, agent resolution
and tool execution as the run executor, streaming text pieces to a
callback. Tool calls run inside `tool_call_scope`, so builtins (such as
`delegate`) know the agent and room calling them."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aster.server.agents.models import Agent, AgentState
from aster.server.errors import AsterError, FailedPrecondition, ResourceExhausted
from aster.server.providers.base import (
    ChatMessage,
    Finish,
    ModelProvider,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    ToolCallRequest,
    ToolSpec,
    UsageDelta,
)
from aster.server.runs.dependencies import ProviderSource, ToolRunner
from aster.server.tools.call_context import ToolCallContext, tool_call_scope

OnText = Callable[[str], Awaitable[None]]


@dataclass
class Reply:
    """What an agent said in one turn, and the tokens it cost."""

    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0


@dataclass(frozen=True)
class Speaking:
    """Who speaks where: for the tool-call context of the reply's tools."""

    tenant: str
    room_id: str
    room_run_id: str


class AgentVoice:
    """Asks an agent for one reply to a conversation, with its tool loop."""

    def __init__(self, providers: ProviderSource, tools: ToolRunner, max_steps: int) -> None:
        self._providers = providers
        self._tools = tools
        self._max_steps = max_steps

    async def reply(
        self,
        where: Speaking,
        agent: Agent,
        context: Sequence[ChatMessage],
        *,
        extra_tools: Sequence[str] = (),
        on_text: OnText,
        on_step_text: OnText | None = None,
    ) -> Reply:
        """The agent's reply to `context`. Every text piece goes to
        `on_text`; the text of a step that also calls tools goes to
        `on_step_text` (it is not part of the final reply)."""
        if agent.spec.state is AgentState.DISABLED:
            raise FailedPrecondition(f"agent {agent.id!r} is disabled", field="agent_id")
        tool_ids = list(dict.fromkeys([*agent.spec.tools, *extra_tools]))
        tools: Sequence[ToolSpec] = ()
        names: dict[str, str] = {}
        if tool_ids:
            tools, names = await self._tools.callable_tools(where.tenant, tool_ids)
        provider = self._providers.provider(agent.spec.model)
        conversation = list(context)
        reply = Reply()
        for _step in range(self._max_steps):
            request = ModelRequest(
                config=agent.spec.model, messages=tuple(conversation), tools=tuple(tools)
            )
            text, calls = await self._model_call(request, provider, reply, on_text)
            if not calls:
                reply.text = text
                return reply
            if text and on_step_text is not None:
                await on_step_text(text)
            conversation.append(ChatMessage(role="assistant", content=text, tool_calls=calls))
            for call in calls:
                reply.tool_calls += 1
                output = await self._call_tool(where, agent, call, names)
                conversation.append(ChatMessage(role="tool", content=output, tool_call_id=call.id))
        raise ResourceExhausted(
            f"agent {agent.id!r} made {self._max_steps} model calls without a final answer "
            "(ASTER_RUN_MAX_STEPS)"
        )

    async def _model_call(
        self, request: ModelRequest, provider: ModelProvider, reply: Reply, on_text: OnText
    ) -> tuple[str, tuple[ToolCallRequest, ...]]:
        parts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        used = (0, 0)
        stream = provider.stream(request)
        async with contextlib.aclosing(stream):
            async for delta in stream:
                if isinstance(delta, TextDelta) and delta.text:
                    parts.append(delta.text)
                    await on_text(delta.text)
                elif isinstance(delta, ToolCallDelta):
                    call = calls.setdefault(
                        delta.index, {"id": delta.id or f"call_{delta.index}", "name": "", "a": ""}
                    )
                    call["name"] = call["name"] or delta.name
                    call["a"] += delta.arguments
                elif isinstance(delta, UsageDelta):
                    used = (delta.input_tokens, delta.output_tokens)
                elif isinstance(delta, Finish):
                    break
        reply.input_tokens += used[0]
        reply.output_tokens += used[1]
        requests = tuple(
            ToolCallRequest(c["id"], c["name"], c["a"]) for _, c in sorted(calls.items())
        )
        return "".join(parts), requests

    async def _call_tool(
        self, where: Speaking, agent: Agent, call: ToolCallRequest, names: dict[str, str]
    ) -> str:
        try:
            arguments = json.loads(call.arguments or "{}")
            if not isinstance(arguments, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            return json.dumps({"error": f"the arguments are not a JSON object: {err}"})
        if call.name not in names:
            return json.dumps({"error": f"the model called {call.name!r}, which the agent lacks"})
        caller = ToolCallContext(
            tenant=where.tenant,
            agent_id=agent.id,
            session_id="",
            run_id=where.room_run_id,
            tool_call_id=call.id,
            room_id=where.room_id,
        )
        try:
            with tool_call_scope(caller):
                result = await self._tools.execute(where.tenant, names[call.name], arguments)
        except AsterError as err:
            return json.dumps({"error": err.message})
        return json.dumps({"error": result.error} if result.error else result.output)
