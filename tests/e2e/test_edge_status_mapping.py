"""Every gRPC status the API uses maps to its HTTP status through the real
Envoy edge, with the {"code", "message", "details"} body.

Some codes (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED) have no
path in the server yet, so a small upstream in this test returns each code on
demand; the edge configuration under test is the one `aster edge` renders."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from aster.server.errors import (
    AlreadyExists,
    AsterError,
    EtagMismatch,
    InvalidArgument,
    NotFound,
)
from aster.server.rpc.status import abort_with
from aster.v1 import agent_pb2, agent_pb2_grpc
from tests.processes import Ports, Process, free_port, stack_env


class Unauthenticated(AsterError):
    code = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class PermissionDenied(AsterError):
    code = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class ResourceExhausted(AsterError):
    code = "RESOURCE_EXHAUSTED"
    reason = "RATE_LIMITED"


class Unimplemented(AsterError):
    code = "UNIMPLEMENTED"
    reason = "NOT_IMPLEMENTED"


ERRORS: dict[str, tuple[type[AsterError], int, int]] = {
    "not-found": (NotFound, 404, 5),
    "invalid-argument": (InvalidArgument, 400, 3),
    "already-exists": (AlreadyExists, 409, 6),
    "aborted": (EtagMismatch, 409, 10),
    "unauthenticated": (Unauthenticated, 401, 16),
    "permission-denied": (PermissionDenied, 403, 7),
    "resource-exhausted": (ResourceExhausted, 429, 8),
    "unimplemented": (Unimplemented, 501, 12),
}


class FailingAgents(agent_pb2_grpc.AgentServiceServicer):
    """GetAgent fails with the error named by the requested id."""

    async def GetAgent(self, request: agent_pb2.GetAgentRequest, context: Any) -> agent_pb2.Agent:  # noqa: N802
        error, _, _ = ERRORS[request.id]
        await abort_with(context, error(f"{request.id} on purpose", field="id"))
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
async def edge_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server = grpc.aio.server()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(FailingAgents(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ports = Ports(grpc=port, metrics=free_port())
    data_dir: Path = tmp_path_factory.mktemp("edge-mapping")
    # This upstream has no /health, so readiness is a mapped route answering.
    edge = None
    try:
        # Poll from a thread: the upstream answers on this event loop.
        edge = await asyncio.to_thread(start_edge_without_health, ports, data_dir)
        yield f"http://127.0.0.1:{ports.http}"
    finally:
        if edge is not None:
            edge.stop()
        await server.stop(0)


def start_edge_without_health(ports: Ports, data_dir: Path) -> Process:
    edge = Process(
        f"edge-{ports.http}",
        [sys.executable, "-m", "aster.server.cli", "edge"],
        stack_env(ports, data_dir),
        data_dir / "logs",
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        edge.assert_running()
        try:
            httpx.get(f"http://127.0.0.1:{ports.http}/v1/agents/not-found", timeout=1)
            return edge
        except httpx.TransportError:
            time.sleep(0.1)
    edge.stop()
    raise AssertionError(f"edge did not start:\n{edge.log_tail()}")


@pytest.mark.parametrize("name", sorted(ERRORS))
async def test_status_maps_to_http(edge_url: str, name: str) -> None:
    _, http_status, grpc_code = ERRORS[name]
    async with httpx.AsyncClient(base_url=edge_url, timeout=10) as http:
        response = await http.get(f"/v1/agents/{name}")
    assert response.status_code == http_status, response.text
    body = response.json()
    assert body["code"] == grpc_code
    assert body["message"] == f"{name} on purpose"
    (detail,) = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert detail["domain"] == "aster.dev"
    assert detail["metadata"] == {"field": "id"}
