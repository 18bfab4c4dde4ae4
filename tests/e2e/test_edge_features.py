"""The Envoy edge's own features through the real Envoy: gRPC-Web, CORS,
request ids, the per-client rate limit, request limits, connection limits,
the overload manager and the JSON access log (docs/edge.md)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from aster.v1 import agent_pb2, system_pb2, system_pb2_grpc
from tests.conftest import Stack
from tests.processes import Ports, Process, stack_env, start_edge, start_server

GRPC_WEB = "application/grpc-web+proto"
APP_ORIGIN = "https://app.example.com"


# --- gRPC-Web framing -------------------------------------------------------


def grpc_web_body(message: Message) -> bytes:
    """One gRPC-Web data frame: flag 0x00, 4-byte big-endian length, message."""
    payload = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(payload)) + payload


@dataclass
class GrpcWebReply:
    """A parsed gRPC-Web response."""

    response: httpx.Response
    messages: list[bytes] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> int:
        """grpc-status from the trailer frame, or from the headers of a
        trailers-only reply."""
        return int(self.trailers.get("grpc-status", self.response.headers.get("grpc-status", -1)))

    def trailer(self, name: str) -> str:
        return self.trailers.get(name) or str(self.response.headers.get(name, ""))


def parse_grpc_web(response: httpx.Response) -> GrpcWebReply:
    reply = GrpcWebReply(response)
    data = response.content
    if response.headers.get("content-type", "").startswith("application/grpc-web-text"):
        # Each chunk is base64 on its own, padding included: decode by quads.
        data = b"".join(base64.b64decode(data[i : i + 4]) for i in range(0, len(data), 4))
    offset = 0
    while offset < len(data):
        flag = data[offset]
        (length,) = struct.unpack(">I", data[offset + 1 : offset + 5])
        payload = data[offset + 5 : offset + 5 + length]
        assert len(payload) == length, "truncated gRPC-Web frame"
        offset += 5 + length
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    reply.trailers[name.strip().lower()] = value.strip()
        else:
            assert flag == 0x00, f"unexpected frame flag {flag:#x}"
            reply.messages.append(payload)
    return reply


async def grpc_web_call(
    http: httpx.AsyncClient, method: str, request: Message, **headers: str
) -> GrpcWebReply:
    response = await http.post(
        method,
        content=grpc_web_body(request),
        headers={"content-type": GRPC_WEB, "x-grpc-web": "1", **headers},
    )
    assert response.status_code == 200, response.text
    return parse_grpc_web(response)


# --- the edge's access log --------------------------------------------------


def access_log(edge: Process) -> list[dict[str, Any]]:
    """The JSON access log lines of an edge (its other lines are Envoy's own
    log, which starts with `[`)."""
    lines = edge.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def wait_for_log(
    edge: Process, matches: Callable[[dict[str, Any]], bool], timeout: float = 10
) -> dict[str, Any]:
    """The first access log entry `matches` accepts (Envoy flushes each second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in access_log(edge):
            if matches(entry):
                return entry
        time.sleep(0.2)
    raise AssertionError(f"no matching access log entry:\n{edge.log_tail()}")


def has_request_id(request_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda entry: entry.get("request_id") == request_id


# --- extra edges with their own settings ------------------------------------


@dataclass
class Edge:
    """An edge started with extra settings in front of the module's server."""

    ports: Ports
    process: Process

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"


@pytest.fixture(scope="module")
def server_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ports]:
    """A server of this module's own, behind the edges below."""
    ports = Ports()
    server = start_server(ports, tmp_path_factory.mktemp("edge-features"))
    yield ports
    assert server.stop() == 0, server.log_tail()


@pytest.fixture(scope="module")
def edge_with(
    server_ports: Ports, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Edge]]:
    """Starts an edge with extra `ASTER_*` settings (stopped with the module)."""
    started: list[Process] = []

    def start(**env: str) -> Edge:
        # Its own data dir: the edge renders its config there.
        ports = Ports(grpc=server_ports.grpc, metrics=server_ports.metrics)
        process = start_edge(ports, tmp_path_factory.mktemp("edge"), **env)
        started.append(process)
        return Edge(ports, process)

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def cors_edge(edge_with: Callable[..., Edge]) -> Edge:
    return edge_with(ASTER_CORS_ORIGINS=APP_ORIGIN)


@pytest.fixture(scope="module")
def rate_limited_edge(edge_with: Callable[..., Edge]) -> Edge:
    return edge_with(ASTER_EDGE_RATE_LIMIT_RPS="2")


# --- gRPC-Web ---------------------------------------------------------------


async def test_grpc_web_unary_call(http: httpx.AsyncClient) -> None:
    reply = await grpc_web_call(
        http, "/aster.v1.SystemService/GetInfo", system_pb2.GetInfoRequest()
    )
    assert reply.response.headers["content-type"] == GRPC_WEB
    (message,) = reply.messages
    info = system_pb2.SystemInfo.FromString(message)
    assert info.version
    assert info.storage_backend == "sqlite"
    assert info.workers == 1
    assert info.start_time.seconds > 0
    assert reply.trailers["grpc-status"] == "0"


async def test_grpc_web_create_then_get_agent(http: httpx.AsyncClient) -> None:
    agent = agent_pb2.Agent(
        display_name="Web agent", instructions="Be brief.", labels={"via": "grpc-web"}
    )
    created_reply = await grpc_web_call(
        http, "/aster.v1.AgentService/CreateAgent", agent_pb2.CreateAgentRequest(agent=agent)
    )
    assert created_reply.status == 0, created_reply.trailers
    created = agent_pb2.Agent.FromString(created_reply.messages[0])
    assert created.id
    assert created.etag

    got_reply = await grpc_web_call(
        http, "/aster.v1.AgentService/GetAgent", agent_pb2.GetAgentRequest(id=created.id)
    )
    assert got_reply.status == 0
    got = agent_pb2.Agent.FromString(got_reply.messages[0])
    assert got.id == created.id
    assert got.display_name == "Web agent"
    assert got.instructions == "Be brief."
    assert dict(got.labels) == {"via": "grpc-web"}
    assert got.state == agent_pb2.AGENT_STATE_ACTIVE
    # The same agent over REST.
    assert (await http.get(f"/v1/agents/{created.id}")).json()["display_name"] == "Web agent"


async def test_grpc_web_error_carries_status_and_details(http: httpx.AsyncClient) -> None:
    reply = await grpc_web_call(
        http, "/aster.v1.AgentService/GetAgent", agent_pb2.GetAgentRequest(id="no-such-agent")
    )
    assert reply.messages == []
    assert reply.status == 5
    assert "no-such-agent" in reply.trailer("grpc-message")
    details = reply.trailer("grpc-status-details-bin")
    status = status_pb2.Status.FromString(base64.b64decode(details + "=" * (-len(details) % 4)))
    assert status.code == 5
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details)
    assert info.reason == "NOT_FOUND"


async def test_grpc_web_text_encoding(http: httpx.AsyncClient) -> None:
    # Browsers without binary streaming send base64 (`grpc-web-text`).
    response = await http.post(
        "/aster.v1.SystemService/GetInfo",
        content=base64.b64encode(grpc_web_body(system_pb2.GetInfoRequest())),
        headers={
            "content-type": "application/grpc-web-text",
            "accept": "application/grpc-web-text",
        },
    )
    assert response.status_code == 200
    reply = parse_grpc_web(response)
    assert system_pb2.SystemInfo.FromString(reply.messages[0]).storage_backend == "sqlite"
    assert reply.status == 0


# --- CORS -------------------------------------------------------------------


async def test_cors_preflight_from_an_allowed_origin(cors_edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=cors_edge.base, timeout=10) as http:
        response = await http.options(
            "/v1/agents",
            headers={
                "origin": APP_ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,authorization,x-api-key",
            },
        )
    assert response.status_code in (200, 204)
    headers = response.headers
    assert headers["access-control-allow-origin"] == APP_ORIGIN
    methods = {m.strip() for m in headers["access-control-allow-methods"].split(",")}
    assert methods == {"GET", "POST", "PATCH", "DELETE", "OPTIONS"}
    allowed = {h.strip() for h in headers["access-control-allow-headers"].split(",")}
    assert allowed >= {"content-type", "authorization", "x-api-key", "x-grpc-web", "x-request-id"}
    assert allowed >= {"x-user-agent", "grpc-timeout"}
    assert headers["access-control-max-age"] == "86400"


async def test_cors_preflight_from_another_origin_is_not_allowed(cors_edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=cors_edge.base, timeout=10) as http:
        response = await http.options(
            "/v1/agents",
            headers={"origin": "https://evil.example.com", "access-control-request-method": "POST"},
        )
    assert "access-control-allow-origin" not in response.headers


async def test_cors_actual_requests_carry_the_headers(cors_edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=cors_edge.base, timeout=10) as http:
        response = await http.get("/v1/system/info", headers={"origin": APP_ORIGIN})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == APP_ORIGIN
        exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
        assert exposed == {"grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"}

        # A browser's gRPC-Web call, including an error it must be able to read.
        reply = await grpc_web_call(
            http,
            "/aster.v1.AgentService/GetAgent",
            agent_pb2.GetAgentRequest(id="missing"),
            origin=APP_ORIGIN,
        )
        assert reply.response.headers["access-control-allow-origin"] == APP_ORIGIN
        assert reply.status == 5

        other = await http.get("/v1/system/info", headers={"origin": "https://evil.example.com"})
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers


async def test_cors_is_off_by_default(http: httpx.AsyncClient) -> None:
    preflight = await http.options(
        "/v1/agents", headers={"origin": APP_ORIGIN, "access-control-request-method": "POST"}
    )
    actual = await http.get("/v1/system/info", headers={"origin": APP_ORIGIN})
    assert actual.status_code == 200
    for response in (preflight, actual):
        assert not [h for h in response.headers if h.startswith("access-control-")]


# --- request ids ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["short", "uuid-shaped"])
async def test_request_id_is_kept_echoed_and_logged(
    stack: Stack, http: httpx.AsyncClient, kind: str
) -> None:
    # Envoy rewrites one character of 36-character ids unless told not to.
    request_id = f"test-123-{uuid.uuid4().hex[:8]}" if kind == "short" else str(uuid.uuid4())
    response = await http.get("/v1/system/info", headers={"x-request-id": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    entry = await asyncio.to_thread(wait_for_log, stack.edge, has_request_id(request_id))
    assert entry["path"] == "/v1/system/info"
    assert entry["method"] == "GET"
    assert entry["grpc_path"] == "/aster.v1.SystemService/GetInfo"
    assert entry["response_code"] == 200


async def test_a_request_id_is_generated_when_missing(http: httpx.AsyncClient) -> None:
    first = (await http.get("/v1/system/info")).headers["x-request-id"]
    second = (await http.get("/v1/system/info")).headers["x-request-id"]
    assert first != second
    uuid.UUID(first)


class RecordingSystem(system_pb2_grpc.SystemServiceServicer):
    """Remembers the metadata of every GetInfo call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []

    async def GetInfo(  # noqa: N802
        self, request: system_pb2.GetInfoRequest, context: Any
    ) -> system_pb2.SystemInfo:
        self.calls.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        return system_pb2.SystemInfo(version="recording")


@pytest.fixture(scope="module")
async def recording_edge(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[str, RecordingSystem]]:
    """An edge in front of a gRPC upstream that records request metadata."""
    # Only GetInfo is served; the edge is never asked for the rest.
    servicer = RecordingSystem()  # type: ignore[abstract]
    server = grpc.aio.server()
    system_pb2_grpc.add_SystemServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ports = Ports(grpc=port)
    base = f"http://127.0.0.1:{ports.http}"
    edge = Process(
        f"edge-{ports.http}",
        [sys.executable, "-m", "aster.server.cli", "edge"],
        stack_env(ports, tmp_path_factory.mktemp("edge-recording")),
        tmp_path_factory.mktemp("edge-recording-logs"),
    )
    try:
        # Poll from a thread: the upstream answers on this event loop.
        await asyncio.to_thread(wait_answering, edge, f"{base}/v1/system/info")
        yield base, servicer
    finally:
        edge.stop()
        await server.stop(0)


def wait_answering(edge: Process, url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        edge.assert_running()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"edge did not start:\n{edge.log_tail()}")


async def test_request_id_reaches_the_grpc_server(
    recording_edge: tuple[str, RecordingSystem],
) -> None:
    base, servicer = recording_edge
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        servicer.calls.clear()
        await http.get("/v1/system/info", headers={"x-request-id": "test-123"})
        assert servicer.calls[-1]["x-request-id"] == "test-123"

        uuid_shaped = str(uuid.uuid4())
        await http.get("/v1/system/info", headers={"x-request-id": uuid_shaped})
        assert servicer.calls[-1]["x-request-id"] == uuid_shaped

        generated = (await http.get("/v1/system/info")).headers["x-request-id"]
        assert servicer.calls[-1]["x-request-id"] == generated

        await grpc_web_call(
            http,
            "/aster.v1.SystemService/GetInfo",
            system_pb2.GetInfoRequest(),
            **{"x-request-id": "web-456"},
        )
        assert servicer.calls[-1]["x-request-id"] == "web-456"


# --- the per-client rate limit ----------------------------------------------


async def test_rate_limit_answers_429_with_the_json_error(rate_limited_edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=rate_limited_edge.base, timeout=10) as http:
        responses = [await http.get("/v1/system/info") for _ in range(10)]
    limited = [r for r in responses if r.status_code == 429]
    assert limited, [r.status_code for r in responses]
    assert {r.status_code for r in responses} <= {200, 429}
    response = limited[-1]
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert body["code"] == 8
    assert "too many requests" in body["message"]
    assert body["details"] == []


async def test_rate_limit_is_per_client_address(rate_limited_edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=rate_limited_edge.base, timeout=10) as http:
        codes = [(await http.get("/v1/system/info")).status_code for _ in range(10)]
    assert 429 in codes
    # Another client address (loopback has all of 127/8) has its own bucket.
    other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=rate_limited_edge.base, transport=other) as http:
        assert (await http.get("/v1/system/info")).status_code == 200


async def test_health_checks_are_never_rate_limited(rate_limited_edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=rate_limited_edge.base, timeout=10) as http:
        codes = [(await http.get("/v1/system/info")).status_code for _ in range(10)]
        assert 429 in codes
        health = [(await http.get("/health")).status_code for _ in range(10)]
    assert health == [200] * 10


async def test_rate_limited_grpc_web_calls_get_resource_exhausted(
    rate_limited_edge: Edge,
) -> None:
    async with httpx.AsyncClient(base_url=rate_limited_edge.base, timeout=10) as http:
        replies = [
            await grpc_web_call(
                http, "/aster.v1.SystemService/GetInfo", system_pb2.GetInfoRequest()
            )
            for _ in range(10)
        ]
    statuses = [r.status for r in replies]
    assert 8 in statuses, statuses
    assert set(statuses) <= {0, 8}
    limited = replies[statuses.index(8)]
    assert "too many requests" in limited.trailer("grpc-message")


async def test_rate_limited_grpc_calls_get_resource_exhausted(rate_limited_edge: Edge) -> None:
    codes = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{rate_limited_edge.ports.http}") as channel:
        stub = system_pb2_grpc.SystemServiceStub(channel)
        for _ in range(10):
            try:
                await stub.GetInfo(system_pb2.GetInfoRequest(), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


async def test_no_rate_limit_by_default(http: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(*(http.get("/v1/system/info") for _ in range(30)))
    assert [r.status_code for r in responses] == [200] * 30


# --- limits -----------------------------------------------------------------


async def test_oversized_headers_get_431_with_the_json_error(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/system/info", headers={"x-padding": "a" * 100_000})
    assert response.status_code == 431
    body = response.json()
    assert body["code"] == 8
    assert body["details"] == []


async def test_body_over_max_message_bytes_gets_413(http: httpx.AsyncClient) -> None:
    body = b'{"display_name": "x", "instructions": "' + b"a" * (4 * 1024 * 1024 + 1) + b'"}'
    response = await http.post(
        "/v1/agents", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    error = response.json()
    assert error["code"] == 8
    assert error["details"] == []


async def test_grpc_web_message_over_max_message_bytes_is_resource_exhausted(
    http: httpx.AsyncClient,
) -> None:
    agent = agent_pb2.Agent(display_name="x", description="a" * (4 * 1024 * 1024 + 1))
    reply = await grpc_web_call(
        http, "/aster.v1.AgentService/CreateAgent", agent_pb2.CreateAgentRequest(agent=agent)
    )
    assert reply.messages == []
    assert reply.status == 8
    assert "too large" in reply.trailer("grpc-message")


async def test_bodies_larger_than_connection_buffers_pass(http: httpx.AsyncClient) -> None:
    # Well past the 32 KiB per-connection buffers, within the server's limits.
    instructions = "x" * 90_000
    created = await http.post(
        "/v1/agents", json={"display_name": "big", "instructions": instructions}
    )
    assert created.status_code == 200, created.text
    agent_id = created.json()["id"]
    got = await http.get(f"/v1/agents/{agent_id}")
    assert got.json()["instructions"] == instructions
    reply = await grpc_web_call(
        http, "/aster.v1.AgentService/GetAgent", agent_pb2.GetAgentRequest(id=agent_id)
    )
    assert agent_pb2.Agent.FromString(reply.messages[0]).instructions == instructions


async def test_connection_limit(edge_with: Callable[..., Edge]) -> None:
    edge = edge_with(ASTER_EDGE_MAX_CONNECTIONS="3")
    clients = [httpx.AsyncClient(base_url=edge.base, timeout=5) for _ in range(4)]
    try:
        for client in clients[:3]:
            assert (await client.get("/v1/system/info")).status_code == 200
        # The three keep their connections open: a fourth is refused.
        with pytest.raises(httpx.TransportError):
            await clients[3].get("/v1/system/info")
    finally:
        for client in clients:
            await client.aclose()


async def test_overload_manager_watches_heap_and_connections(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as admin:
        stats = await admin.get(f"http://127.0.0.1:{stack.ports.admin}/stats?filter=^overload")
    text = stats.text
    assert "overload.envoy.resource_monitors.fixed_heap.pressure" in text
    assert "overload.envoy.resource_monitors.global_downstream_max_connections.pressure" in text
    assert "overload.envoy.overload_actions.stop_accepting_requests.active: 0" in text
    assert "overload.envoy.overload_actions.shrink_heap.active: 0" in text


# --- the access log ---------------------------------------------------------


async def test_access_log_has_the_upstream_grpc_status(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    # Envoy's own %GRPC_STATUS% would guess from the rewritten replies (a
    # REST 404 as UNIMPLEMENTED, every gRPC-Web call as UNKNOWN).
    ids = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in ("rest", "web", "web-error")}
    assert (
        await http.get("/v1/agents/missing", headers={"x-request-id": ids["rest"]})
    ).status_code == 404
    await grpc_web_call(
        http,
        "/aster.v1.SystemService/GetInfo",
        system_pb2.GetInfoRequest(),
        **{"x-request-id": ids["web"]},
    )
    await grpc_web_call(
        http,
        "/aster.v1.AgentService/GetAgent",
        agent_pb2.GetAgentRequest(id="missing"),
        **{"x-request-id": ids["web-error"]},
    )
    expected = {"rest": 5, "web": 0, "web-error": 5}
    for name, request_id in ids.items():
        entry = await asyncio.to_thread(wait_for_log, stack.edge, has_request_id(request_id))
        assert entry["grpc_status"] == expected[name], entry


async def test_access_log_is_json_without_credentials(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    secret_token = f"Bearer secret-{uuid.uuid4().hex}"
    secret_key = f"key-{uuid.uuid4().hex}"
    request_id = f"log-{uuid.uuid4().hex}"
    response = await http.get(
        "/v1/agents",
        headers={
            "authorization": secret_token,
            "x-api-key": secret_key,
            "x-request-id": request_id,
            "user-agent": "edge-test/1.0",
        },
    )
    assert response.status_code == 200
    entry = await asyncio.to_thread(wait_for_log, stack.edge, has_request_id(request_id))
    assert entry["method"] == "GET"
    assert entry["path"] == "/v1/agents"
    assert entry["response_code"] == 200
    assert entry["grpc_status"] == 0
    assert entry["user_agent"] == "edge-test/1.0"
    assert entry["remote_address"] == "127.0.0.1"
    assert entry["upstream_host"] == f"127.0.0.1:{stack.ports.grpc}"
    assert isinstance(entry["duration_ms"], int)
    assert entry["bytes_sent"] > 0
    assert entry["start_time"].endswith("Z")

    text = stack.edge.log_path.read_text(errors="replace")
    assert secret_token not in text
    assert "secret-" not in text
    assert secret_key not in text
    assert "authorization" not in text.lower()
    assert "x-api-key" not in text.lower()
    # Every line of Envoy's stdout that is not its own log is a JSON object.
    for line in text.splitlines():
        if line and not line.startswith("["):
            json.loads(line)
