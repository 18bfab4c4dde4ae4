"""Runs across restarts and worker processes."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest

from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from tests.chat_helpers import assert_sequence, scripted_agent, text_of, words
from tests.processes import Ports, start_server

COMPLETED = run_pb2.RUN_STATUS_COMPLETED


async def wait_status(
    agents: agent_pb2_grpc.AgentServiceStub, run_id: str, limit_s: float = 30
) -> run_pb2.Run:
    async with asyncio.timeout(limit_s):
        while True:
            run = await agents.GetRun(agent_pb2.GetRunRequest(run_id=run_id))
            if run.status not in (run_pb2.RUN_STATUS_QUEUED, run_pb2.RUN_STATUS_RUNNING):
                return run
            await asyncio.sleep(0.05)


async def test_runs_of_a_crashed_server_resume_as_a_new_attempt(tmp_path: Path) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_RUN_LEASE_S="2")
    text = words(150)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        agent = await scripted_agent(agents, script=[{"text": text}], delay_ms=20)
        foreground = agents.Chat(
            agent_pb2.ChatRequest(
                agent_id=agent.id, message="fg", on_disconnect=run_pb2.ON_DISCONNECT_CONTINUE
            )
        )
        fg_run = (await foreground.read()).run_id
        background = await agents.SendMessage(
            agent_pb2.SendMessageRequest(agent_id=agent.id, message="bg")
        )
        await asyncio.sleep(0.5)
    server.popen.send_signal(signal.SIGKILL)
    server.popen.wait(10)
    server.stop()
    restarted = start_server(ports, tmp_path, ASTER_RUN_LEASE_S="2")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            # The foreground run (whose client walked away with ON_DISCONNECT_CONTINUE)
            # is rescued too, from its last checkpoint.
            resumed = await wait_status(agents, fg_run)
            assert (resumed.status, resumed.attempt) == (COMPLETED, 2)
            assert resumed.result.content == text
            rescued = await wait_status(agents, background.id)
            assert rescued.status == COMPLETED
            assert rescued.attempt == 2
            assert rescued.result.content == text
            events = [
                e async for e in agents.StreamRun(agent_pb2.StreamRunRequest(run_id=background.id))
            ]
            assert_sequence(events)
            assert {e.attempt for e in events} == {1, 2}
            retry = [e for e in events if e.WhichOneof("event") == "run_retry"]
            assert [e.run_retry.attempt for e in retry] == [2]
            assert all(e.attempt == 2 for e in events[events.index(retry[0]) :])
            assert text_of([e for e in events if e.attempt == 2]) == text
            assert events[-1].run_finished.status == COMPLETED
    finally:
        assert restarted.stop() == 0


@pytest.mark.redis
async def test_streams_and_cancels_cross_worker_processes(tmp_path: Path, redis_url: str) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_WORKERS="2", ASTER_REDIS_URL=redis_url)
    try:
        target = f"127.0.0.1:{ports.grpc}"
        async with grpc.aio.insecure_channel(target) as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            text = words(60)
            agent = await scripted_agent(agents, script=[{"text": text}], delay_ms=15)
            runs = [
                await agents.SendMessage(
                    agent_pb2.SendMessageRequest(agent_id=agent.id, message="x")
                )
                for _ in range(4)
            ]
        # Fresh connections spread over both workers; every one of them can
        # follow every run live, wherever it executes.
        for run in runs:
            async with grpc.aio.insecure_channel(target) as channel:
                agents = agent_pb2_grpc.AgentServiceStub(channel)
                events = [
                    e async for e in agents.StreamRun(agent_pb2.StreamRunRequest(run_id=run.id))
                ]
                assert_sequence(events)
                assert text_of(events) == text
        async with grpc.aio.insecure_channel(target) as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            slow = await scripted_agent(agents, script=[{"text": words(400)}], delay_ms=20)
            victims = [
                await agents.SendMessage(
                    agent_pb2.SendMessageRequest(agent_id=slow.id, message="x")
                )
                for _ in range(4)
            ]
        await asyncio.sleep(0.3)
        for victim in victims:
            async with grpc.aio.insecure_channel(target) as channel:
                agents = agent_pb2_grpc.AgentServiceStub(channel)
                started = asyncio.get_running_loop().time()
                cancelled = await agents.CancelRun(agent_pb2.CancelRunRequest(run_id=victim.id))
                assert cancelled.status == run_pb2.RUN_STATUS_CANCELLED
                assert asyncio.get_running_loop().time() - started < 2
    finally:
        assert server.stop() == 0, server.log_tail()


async def test_the_poller_and_the_admitting_worker_never_both_miss_a_run(tmp_path: Path) -> None:
    # A poller that looks all the time races every dispatch for the lease;
    # each run must still start at once, as its first attempt.
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_QUEUE_POLL_S="0.005", ASTER_RUN_LEASE_S="30")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            agent = await scripted_agent(agents, script=[{"text": "ok"}])
            runs = await asyncio.gather(
                *(
                    agents.SendMessage(agent_pb2.SendMessageRequest(agent_id=agent.id, message="x"))
                    for _ in range(40)
                )
            )
            done = [await wait_status(agents, run.id, limit_s=10) for run in runs]
        assert all(run.status == COMPLETED for run in done)
        assert [run.attempt for run in done] == [1] * 40
    finally:
        assert server.stop() == 0
