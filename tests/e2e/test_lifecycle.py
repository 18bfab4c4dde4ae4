"""Server lifecycle: graceful shutdown, several workers, PostgreSQL, `aster up`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aster.server.rpc.catalog import service_names
from aster.v1 import agent_pb2, agent_pb2_grpc, system_pb2, system_pb2_grpc
from tests.processes import Ports, Process, stack_env, start_server, wait_grpc_healthy, wait_http_ok


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent`, from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_has_one_status_per_service(tmp_path: Path) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ["", *service_names()]:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == SERVING, name
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health.Check(health_pb2.HealthCheckRequest(service="aster.v1.Nope"))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        assert server.stop() == 0


async def test_graceful_shutdown_reports_not_serving_then_exits_zero(tmp_path: Path) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_SHUTDOWN_GRACE_S="2")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        states = [(await watch.read()).status]
        assert states == [SERVING]
        started = time.monotonic()
        server.popen.send_signal(signal.SIGTERM)
        states.append((await asyncio.wait_for(watch.read(), 5)).status)
        assert states[-1] == NOT_SERVING
        # New calls are refused while the in-flight Watch drains.
        with pytest.raises(grpc.aio.AioRpcError):
            await agent_pb2_grpc.AgentServiceStub(channel).ListAgents(
                agent_pb2.ListAgentsRequest(), timeout=1, wait_for_ready=False
            )
    code = server.popen.wait(15)
    elapsed = time.monotonic() - started
    assert code == 0, server.log_tail()
    # The open Watch held the server for the grace period, not longer.
    assert elapsed < 2 + 5, elapsed
    assert '"stopped"' in server.log_path.read_text()


async def test_the_drain_keeps_serving_while_health_says_not_serving(tmp_path: Path) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_SHUTDOWN_DRAIN_S="3", ASTER_SHUTDOWN_GRACE_S="1")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING
        started = time.monotonic()
        server.popen.send_signal(signal.SIGTERM)
        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
        # Draining: health says NOT_SERVING, yet new calls are still served.
        served = 0
        while time.monotonic() - started < 2:
            created = await agents.CreateAgent(
                agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="drain")),
                timeout=2,
            )
            assert created.id
            served += 1
            await asyncio.sleep(0.2)
        assert served >= 5
    code = server.popen.wait(15)
    elapsed = time.monotonic() - started
    assert code == 0, server.log_tail()
    assert 3 <= elapsed < 3 + 1 + 5, elapsed


async def test_a_second_signal_ends_the_drain(tmp_path: Path) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_SHUTDOWN_DRAIN_S="60")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING
        server.popen.send_signal(signal.SIGTERM)
        assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
        started = time.monotonic()
        server.popen.send_signal(signal.SIGINT)
    assert server.popen.wait(15) == 0, server.log_tail()
    assert time.monotonic() - started < 10


def test_several_workers_need_redis(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aster.server.cli", "serve"],
        env=stack_env(Ports(), tmp_path, ASTER_WORKERS="2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "ASTER_WORKERS=2 needs ASTER_REDIS_URL" in result.stderr


@pytest.mark.redis
async def test_two_workers_share_the_port(tmp_path: Path, redis_url: str) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_WORKERS="2", ASTER_REDIS_URL=redis_url)
    try:
        ids = []
        for _ in range(20):
            # A fresh channel per call lets the kernel spread connections.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
                agents = agent_pb2_grpc.AgentServiceStub(channel)
                created = await agents.CreateAgent(
                    agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="w"))
                )
                ids.append(created.id)
                info = await system_pb2_grpc.SystemServiceStub(channel).GetInfo(
                    system_pb2.GetInfoRequest()
                )
                assert info.workers == 2
        # Every worker sees every agent: shared state lives in the database.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            page = await agent_pb2_grpc.AgentServiceStub(channel).ListAgents(
                agent_pb2.ListAgentsRequest(page_size=100)
            )
        assert [a.id for a in page.agents] == ids
        assert len(child_pids(server.popen.pid)) >= 2
        # The parent merges the workers' metrics.
        metrics = (
            await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{ports.metrics}/metrics")
        ).text
        assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="CreateAgent"' in metrics
    finally:
        assert server.stop() == 0, server.log_tail()


def worker_pids(parent: int) -> set[int]:
    """The worker processes of a multi-worker server (not the helper
    processes multiprocessing starts, such as its resource tracker)."""
    workers = set()
    for pid in child_pids(parent):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers.add(pid)
    return workers


@pytest.mark.redis
async def test_a_worker_that_dies_is_restarted(tmp_path: Path, redis_url: str) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_WORKERS="2", ASTER_REDIS_URL=redis_url)
    try:
        before = worker_pids(server.popen.pid)
        assert len(before) == 2
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = worker_pids(server.popen.pid)
            if len(now) == 2 and victim not in now:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"no replacement worker: {now}\n{server.log_tail()}")
        await asyncio.to_thread(wait_grpc_healthy, server, ports.grpc)
        for _ in range(6):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
                info = await system_pb2_grpc.SystemServiceStub(channel).GetInfo(
                    system_pb2.GetInfoRequest()
                )
            assert info.workers == 2
        assert "restarted a worker that died" in server.log_tail(400)
    finally:
        assert server.stop() == 0, server.log_tail()


@pytest.mark.postgres
async def test_server_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    from tests.unit.storage.conftest import _reset_postgres

    await _reset_postgres(postgres_url)
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_DATABASE_URL=postgres_url)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports.grpc}") as channel:
            agents = agent_pb2_grpc.AgentServiceStub(channel)
            created = await agents.CreateAgent(
                agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="pg"))
            )
            assert (await agents.GetAgent(agent_pb2.GetAgentRequest(id=created.id))) == created
            info = await system_pb2_grpc.SystemServiceStub(channel).GetInfo(
                system_pb2.GetInfoRequest()
            )
            assert info.storage_backend == "postgresql"
    finally:
        assert server.stop() == 0
        await _reset_postgres(postgres_url)


def test_unreachable_database_fails_start_up_clearly(tmp_path: Path) -> None:
    ports = Ports()
    env = stack_env(
        ports, tmp_path, ASTER_DATABASE_URL=f"postgresql+asyncpg://x@127.0.0.1:{ports.admin}/db"
    )
    result = subprocess.run(
        [sys.executable, "-m", "aster.server.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot reach the database at postgresql+asyncpg://x@127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


def test_aster_up_runs_both_and_stops_on_sigterm(tmp_path: Path) -> None:
    ports = Ports()
    up = Process(
        "up",
        [sys.executable, "-m", "aster.server.cli", "up"],
        stack_env(ports, tmp_path),
        tmp_path / "logs",
    )
    try:
        wait_grpc_healthy(up, ports.grpc)
        wait_http_ok(up, f"http://127.0.0.1:{ports.http}/health")
        created = httpx.post(
            f"http://127.0.0.1:{ports.http}/v1/agents", json={"display_name": "up"}
        )
        assert created.status_code == 200
        # The banner follows once both are up.
        deadline = time.monotonic() + 10
        while f"localhost:{ports.grpc}" not in up.log_path.read_text():
            assert time.monotonic() < deadline, up.log_tail()
            time.sleep(0.1)
    finally:
        code = up.stop(30)
    assert code == 0, up.log_tail()
    # Both children are gone: the ports are free again.
    for port in (ports.grpc, ports.http):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)


def test_a_second_server_on_a_taken_port_fails_clearly(tmp_path: Path) -> None:
    ports = Ports()
    first = start_server(ports, tmp_path / "a")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "aster.server.cli", "serve"],
            env=stack_env(ports, tmp_path / "b", ASTER_METRICS_PORT="0"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert f"cannot listen on 0.0.0.0:{ports.grpc}" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        assert first.stop() == 0
