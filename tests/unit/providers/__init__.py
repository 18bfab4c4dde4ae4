"""Tests of the model providers; helpers shared by them live here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aster.server.providers.base import Delta, Finish, TextDelta, ToolCallDelta, UsageDelta

# No provider test may wait longer than this for a stream.
STREAM_LIMIT_S = 10.0


@dataclass
class AssembledCall:
    """A tool call put back together from its deltas."""

    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class Collected:
    """Everything a stream produced, in order, plus the assembled reply."""

    deltas: list[Delta] = field(default_factory=list)

    @property
    def text_deltas(self) -> list[str]:
        return [d.text for d in self.deltas if isinstance(d, TextDelta)]

    @property
    def text(self) -> str:
        return "".join(self.text_deltas)

    @property
    def tool_calls(self) -> list[AssembledCall]:
        calls: dict[int, AssembledCall] = {}
        for delta in self.deltas:
            if isinstance(delta, ToolCallDelta):
                call = calls.setdefault(delta.index, AssembledCall())
                call.id = call.id or delta.id
                call.name = call.name or delta.name
                call.arguments += delta.arguments
        return [calls[index] for index in sorted(calls)]

    @property
    def usage(self) -> UsageDelta | None:
        usages = [d for d in self.deltas if isinstance(d, UsageDelta)]
        return usages[-1] if usages else None

    @property
    def finish(self) -> Finish | None:
        last = self.deltas[-1] if self.deltas else None
        return last if isinstance(last, Finish) else None


async def collect(
    stream: AsyncIterator[Delta], within_s: float = STREAM_LIMIT_S, into: Collected | None = None
) -> Collected:
    """Reads `stream` to the end (re-raising its error) within `within_s`
    seconds; deltas seen before an error stay in `into`."""
    result = into if into is not None else Collected()
    async with asyncio.timeout(within_s):
        async for delta in stream:
            result.deltas.append(delta)
    return result
