"""One collaboration of a room's agents (a room run): picks speakers by
strategy, asks each for a reply with the room's history as context, and
streams turns, typing, text pieces and messages into the room's stream.

Strategies:

* ROUND_ROBIN: the non-observer agents speak in member order, one turn
  each, until `max_turns`.
* LEADER: the leader speaks with the builtin `delegate(worker, task)` tool;
  each delegation is a worker's turn (posted as the leader's @mention of the
  worker, answered by the worker in the room) whose answer the leader reads
  as the tool result. The leader's reply without a tool call is the final
  answer.
* MENTION: agents speak only when @mentioned by the task or a later message
  (not their own), in order of mention, until nobody is left to answer.

Every strategy stops at `max_turns`, and as soon as an agent's message
contains the stop phrase (`stop_condition`, ignoring case)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from aster.server.agents.service import AgentService
from aster.server.clock import utcnow
from aster.server.errors import AsterError
from aster.server.rooms.context import CONTEXT_MESSAGES, room_context
from aster.server.rooms.delegate import DELEGATE, delegating
from aster.server.rooms.deltas import DeltaWriter
from aster.server.rooms.events import run_data
from aster.server.rooms.mentions import parse_mentions
from aster.server.rooms.models import (
    DELTA,
    RUN_UPDATE,
    TURN_CHANGE,
    TYPING,
    Member,
    Room,
    RoomMessage,
    RoomRole,
    RoomRun,
    RoomStrategy,
    Speaker,
    stream_name,
)
from aster.server.rooms.posting import post_message
from aster.server.rooms.voice import AgentVoice, Speaking
from aster.server.runs.models import RunStatus
from aster.server.storage.room_repository import RoomRepository
from aster.server.streams.log import StreamLog
from aster.server.tools.models import ToolError

_log = structlog.get_logger("aster.rooms")


class _Stop(Exception):
    """The collaboration reached its end (stop phrase, last turn, nobody left)."""


class _Ended(Exception):
    """The run ended elsewhere (cancelled, interrupted) while this replica ran it."""


@dataclass(frozen=True)
class Dependencies:
    """What a collaboration uses."""

    repository: RoomRepository
    log: StreamLog
    agents: AgentService
    voice: AgentVoice


def speakers(room: Room) -> list[Member]:
    """The agent members that take turns (not observers), in member order."""
    return [m for m in room.spec.members if m.who.is_agent and m.role is not RoomRole.OBSERVER]


def leader_of(room: Room) -> Member | None:
    """The room's first agent leader, if any."""
    return next(
        (m for m in room.spec.members if m.who.is_agent and m.role is RoomRole.LEADER), None
    )


class Collaboration:
    """Executes one room run; `execute` ends it with its final status."""

    def __init__(self, deps: Dependencies, tenant: str, run: RoomRun, task: RoomMessage) -> None:
        self._deps = deps
        self._tenant = tenant
        self.run = run
        self._task = task
        self._stream = stream_name(run.room_id)
        self._abort: BaseException | None = None
        self._last_text = ""
        # Text pieces go through one batching writer; every other append of
        # the collaboration flushes it first, so order is kept.
        self._deltas = DeltaWriter(deps.log, tenant, self._stream)

    async def execute(self, shutting_down: asyncio.Event) -> None:
        """Runs the strategy, then stores the run's end and its event."""
        run = self.run
        try:
            if run.strategy is RoomStrategy.LEADER:
                await self._leader()
            elif run.strategy is RoomStrategy.MENTION:
                await self._mention()
            else:
                await self._round_robin()
            run.status = RunStatus.COMPLETED
        except _Stop:
            run.status = RunStatus.COMPLETED
        except _Ended:
            return
        except asyncio.CancelledError:
            if shutting_down.is_set():
                run.status, run.error = RunStatus.FAILED, "the server shut down during the run"
            else:
                run.status, run.error = RunStatus.CANCELLED, "the collaboration was cancelled"
        except AsterError as err:
            run.status, run.error = RunStatus.FAILED, err.message
        except Exception as err:
            _log.error("room run failed", room_run_id=run.id, exc_info=err)
            run.status, run.error = RunStatus.FAILED, "internal error; the server log has details"
        if run.status is RunStatus.COMPLETED:
            run.result = self._last_text
        run.end_time = utcnow()
        await asyncio.shield(self._deltas.discard())
        await asyncio.shield(self._store_end())

    async def _store_end(self) -> None:
        events = await self._deps.repository.update_run(
            self._tenant, self.run, (RUN_UPDATE, run_data(self.run))
        )
        if events:
            await self._deps.log.publish(events)
        _log.info("room run finished", room_run_id=self.run.id, status=self.run.status.value)

    # Strategies -------------------------------------------------------------

    async def _round_robin(self) -> None:
        for index in range(self.run.max_turns):
            room = await self._room()
            order = speakers(room)
            if not order:
                return
            await self._turn(room, order[index % len(order)].who.agent_id)

    async def _mention(self) -> None:
        queue: list[str] = []
        processed = self._task.seq
        self._enqueue_mentions(await self._room(), [self._task], queue)
        while queue:
            if self.run.turns >= self.run.max_turns:
                return
            room = await self._room()
            agent_id = queue.pop(0)
            if agent_id not in {m.who.agent_id for m in speakers(room)}:
                continue  # it left the room (or became an observer) since it was mentioned
            await self._turn(room, agent_id)
            page, _ = await self._deps.repository.messages_page(
                self._tenant, self.run.room_id, processed, 1000
            )
            if page:
                processed = page[-1].seq
            self._enqueue_mentions(room, page, queue)

    @staticmethod
    def _enqueue_mentions(room: Room, messages: Sequence[RoomMessage], queue: list[str]) -> None:
        agents = {m.who.agent_id for m in speakers(room)}
        for message in messages:
            for name in message.mentions:
                if name in agents and name != message.speaker.agent_id and name not in queue:
                    queue.append(name)

    async def _leader(self) -> None:
        room = await self._room()
        leader = leader_of(room)
        if leader is None:
            return
        with delegating(self):
            await self._turn(room, leader.who.agent_id, extra_tools=(DELEGATE,))
        raise _Stop

    async def delegate(self, leader_id: str, worker: str, task: str) -> str:
        """The `delegate` tool: `worker`'s turn on `task`; its answer."""
        room = await self._room()
        leader = leader_of(room)
        if leader is None or leader.who.agent_id != leader_id:
            # A worker whose own tools include `delegate` runs inside the
            # leader's call; only the leader hands out tasks.
            raise ToolError(
                f"only the room's leader can delegate; {leader_id[:80]!r} is not it: "
                "answer the task yourself"
            )
        workers = {m.who.agent_id for m in speakers(room) if m.role is not RoomRole.LEADER} - {
            leader_id
        }
        if worker not in workers:
            raise ToolError(
                f"{worker[:80]!r} is not a worker of this room; use one of: "
                + (", ".join(sorted(workers)) or "(none)")
            )
        if self._abort is not None:
            raise ToolError("the collaboration is over; write the final answer now")
        if self.run.turns >= self.run.max_turns:
            raise ToolError(
                f"no turns left (max_turns {self.run.max_turns}); write the final answer now"
            )
        await self._deltas.flush()
        await post_message(
            self._deps.repository,
            self._deps.log,
            self._tenant,
            RoomMessage(
                room_id=self.run.room_id,
                seq=0,
                speaker=Speaker(agent_id=leader_id),
                text=f"@{worker} {task}",
                mentions=(worker,),
                room_run_id=self.run.id,
            ),
        )
        try:
            answer = await self._turn(room, worker, task=task)
        except (_Stop, _Ended) as err:
            self._abort = err
            raise ToolError("the collaboration is over; write the final answer now") from None
        await self._event(TYPING, {"agent_id": leader_id, "room_run_id": self.run.id})
        return answer.text

    # One turn ---------------------------------------------------------------

    async def _room(self) -> Room:
        return await self._deps.repository.get(self._tenant, self.run.room_id)

    async def _event(self, kind: str, data: dict[str, object]) -> None:
        await self._deltas.flush()
        await self._deps.log.append(self._tenant, self._stream, kind, dict(data))

    async def _turn(
        self, room: Room, agent_id: str, *, task: str = "", extra_tools: Sequence[str] = ()
    ) -> RoomMessage:
        run = self.run
        if run.turns >= run.max_turns:
            raise _Stop
        current = await self._deps.repository.get_run(self._tenant, run.room_id, run.id)
        if current.status.terminal:
            raise _Ended
        run.turns += 1
        member = next(m for m in room.spec.members if m.who.agent_id == agent_id)
        agent = await self._deps.agents.get(self._tenant, agent_id)
        await self._event(
            TURN_CHANGE,
            {"room_run_id": run.id, "turn": run.turns, "agent_id": agent_id, "task": task},
        )
        await self._event(TYPING, {"agent_id": agent_id, "room_run_id": run.id})
        history = await self._deps.repository.recent_messages(
            self._tenant, run.room_id, CONTEXT_MESSAGES
        )
        members = [m.who.key for m in room.spec.members]

        async def on_text(piece: str) -> None:
            self._deltas.add(DELTA, {"agent_id": agent_id, "delta": piece})

        async def on_step_text(text: str) -> None:
            await self._say(agent_id, text, members)

        reply = await self._deps.voice.reply(
            Speaking(self._tenant, run.room_id, run.id),
            agent,
            room_context(room, agent, member.role, history),
            extra_tools=extra_tools,
            on_text=on_text,
            on_step_text=on_step_text,
        )
        if self._abort is not None and not isinstance(self._abort, _Stop):
            raise self._abort
        message = await self._say(agent_id, reply.text, members)
        self._last_text = reply.text
        run.input_tokens += reply.input_tokens
        run.output_tokens += reply.output_tokens
        if await self._deps.repository.update_run(self._tenant, run, None) is None:
            raise _Ended
        stop = run.stop_condition.strip().lower()
        if stop and stop in reply.text.lower():
            raise _Stop
        return message

    async def _say(self, agent_id: str, text: str, members: Sequence[str]) -> RoomMessage:
        await self._deltas.flush()
        return await post_message(
            self._deps.repository,
            self._deps.log,
            self._tenant,
            RoomMessage(
                room_id=self.run.room_id,
                seq=0,
                speaker=Speaker(agent_id=agent_id),
                text=text,
                mentions=tuple(parse_mentions(text, members)),
                room_run_id=self.run.id,
            ),
        )
