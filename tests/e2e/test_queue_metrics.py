"""The queue gauges of a real server: background runs waiting in the run
queue show in `aster_run_queue_depth` on the metrics port, and leave it
once they ran. The gauges are refreshed from the database every
QUEUE_REFRESH_S, so every check polls with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest

from aster.server.observability.aster_metrics import QUEUE_REFRESH_S
from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from tests.chat_helpers import scripted_agent, words
from tests.processes import Ports, start_server

QUEUED = run_pb2.RUN_STATUS_QUEUED
COMPLETED = run_pb2.RUN_STATUS_COMPLETED
CANCELLED = run_pb2.RUN_STATUS_CANCELLED
WAIT_S = QUEUE_REFRESH_S * 4 + 10
GAUGES = (
    "aster_run_queue_depth",
    "aster_run_queue_oldest_age_seconds",
    "aster_runs_lease_expired",
    "aster_workflow_execution_queue_depth",
    "aster_workflow_executions_lease_expired",
)


def samples(text: str) -> dict[str, float]:
    """The unlabelled samples of a /metrics page."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


async def scrape_until(
    port: int, wanted: Callable[[dict[str, float]], bool], within_s: float = WAIT_S
) -> dict[str, float]:
    """The server's metrics, scraped until `wanted` holds for them."""
    seen: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        try:
            async with asyncio.timeout(within_s):
                while True:
                    seen = samples((await http.get("/metrics")).text)
                    if wanted(seen):
                        return seen
                    await asyncio.sleep(0.2)
        except TimeoutError:
            gauges = {name: seen.get(name) for name in GAUGES}
            raise AssertionError(f"not seen within {within_s} s; last: {gauges}") from None


async def wait_terminal(agents: agent_pb2_grpc.AgentServiceStub, run_id: str) -> run_pb2.Run:
    async with asyncio.timeout(WAIT_S):
        while True:
            run = await agents.GetRun(agent_pb2.GetRunRequest(run_id=run_id))
            if run.status not in (QUEUED, run_pb2.RUN_STATUS_RUNNING):
                return run
            await asyncio.sleep(0.1)


@pytest.fixture(params=["one-process", pytest.param("two-workers", marks=pytest.mark.redis)])
def server_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """One server process, or two worker processes whose gauges are merged
    (PROMETHEUS_MULTIPROC_DIR: the value read last wins)."""
    if request.param == "one-process":
        return {}
    redis_url: str = request.getfixturevalue("redis_url")
    return {"ASTER_WORKERS": "2", "ASTER_REDIS_URL": redis_url}


async def test_queued_runs_show_in_the_queue_depth_gauge(
    tmp_path: Path, server_env: dict[str, str]
) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, **server_env)
    try:
        idle = await scrape_until(ports.metrics, lambda m: all(g in m for g in GAUGES))
        assert idle["aster_run_queue_depth"] == 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            # Echoes the message word by word, 50 ms a word: 100 s for the
            # first run, which the runs sent after it wait for.
            agent = await scripted_agent(agents, delay_ms=50)
            first = await agents.SendMessage(
                agent_pb2.SendMessageRequest(agent_id=agent.id, message=words(2000))
            )
            queued = [
                await agents.SendMessage(
                    agent_pb2.SendMessageRequest(
                        agent_id=agent.id,
                        message=f"queued {i}",
                        session_id=first.session_id,
                        multitask_strategy=run_pb2.MULTITASK_STRATEGY_ENQUEUE,
                    )
                )
                for i in range(3)
            ]
            assert [r.status for r in queued] == [QUEUED] * 3
            # Each waits for the run before it in its session: none could
            # start now, so none counts as waiting for a worker (its age).
            during = await scrape_until(
                ports.metrics,
                lambda m: (
                    m["aster_run_queue_depth"] == 3 and m["aster_run_queue_oldest_age_seconds"] < 1
                ),
            )
            assert during["aster_runs_lease_expired"] == 0
            assert during["aster_workflow_execution_queue_depth"] == 0
            await agents.CancelRun(agent_pb2.CancelRunRequest(run_id=first.id))
            assert (await wait_terminal(agents, first.id)).status == CANCELLED
            for run in queued:
                assert (await wait_terminal(agents, run.id)).status == COMPLETED
        after = await scrape_until(
            ports.metrics,
            lambda m: (
                m["aster_run_queue_depth"] == 0 and m["aster_run_queue_oldest_age_seconds"] == 0
            ),
        )
        assert after["aster_runs_lease_expired"] == 0
    finally:
        assert server.stop() == 0, server.log_tail()
