"""Schedules across replicas: two server processes on one PostgreSQL, each
running its own scheduler, start exactly one execution per firing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from aster.v1 import workflow_pb2, workflow_pb2_grpc
from tests.processes import Ports, Process, stack_env, start_server
from tests.unit.storage.conftest import _reset_postgres

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[list[Ports]]:
    asyncio.run(_reset_postgres(postgres_url))
    env = {
        "ASTER_DATABASE_URL": postgres_url,
        "ASTER_REDIS_URL": redis_url,
        "ASTER_AUTO_MIGRATE": "false",
        "ASTER_LOG_LEVEL": "warning",
        "ASTER_WORKFLOW_SCHEDULER_INTERVAL_S": "0.2",
    }
    ports = [Ports(), Ports()]
    upgrade = subprocess.run(
        [sys.executable, "-m", "aster.server.cli", "db", "upgrade"],
        env=stack_env(ports[0], tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    started: list[Process] = []
    try:
        for index, replica_ports in enumerate(ports):
            started.append(start_server(replica_ports, tmp_path / f"r{index}", **env))
        yield ports
        for process in started:
            process.assert_running()
    finally:
        for process in started:
            process.stop()
        asyncio.run(_reset_postgres(postgres_url))


async def test_an_every_second_schedule_for_5_s_on_two_replicas_starts_5_executions(
    replicas: list[Ports],
) -> None:
    # Whole seconds, far enough ahead that both replicas see the schedule first.
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    end = start + timedelta(seconds=4)  # firings at start, +1, +2, +3, +4
    workflow = workflow_pb2.Workflow()
    json_format.ParseDict(
        {
            "display_name": "Ticker",
            "steps": [{"name": "now", "tool": {"tool_id": "get_time"}}],
            "schedules": [
                {
                    "id": "every-second",
                    "cron": "* * * * * *",
                    "start_time": start.isoformat(),
                    "end_time": end.isoformat(),
                    "input": {"source": "schedule"},
                }
            ],
        },
        workflow,
    )
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{replicas[0].grpc}") as first,
        grpc.aio.insecure_channel(f"127.0.0.1:{replicas[1].grpc}") as second,
    ):
        stub = workflow_pb2_grpc.WorkflowServiceStub(first)
        created = await stub.CreateWorkflow(
            workflow_pb2.CreateWorkflowRequest(workflow=workflow, workflow_id="ticker")
        )
        assert created.schedules[0].id == "every-second"
        # Past the end, plus time for a slow tick on a busy machine.
        await asyncio.sleep((end - datetime.now(UTC)).total_seconds() + 3)
        listed = await workflow_pb2_grpc.WorkflowServiceStub(second).ListExecutions(
            workflow_pb2.ListExecutionsRequest(workflow_id="ticker", page_size=100)
        )
    keys = sorted(e.idempotency_key for e in listed.executions)
    expected = [
        f"schedule:ticker:every-second:{(start + timedelta(seconds=s)).isoformat()}"
        for s in range(5)
    ]
    assert keys == expected, keys
    assert all(
        json_format.MessageToDict(e.input) == {"source": "schedule"} for e in listed.executions
    )
