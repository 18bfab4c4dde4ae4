"""Authentication, scopes and tenants through the real server and Envoy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from aster.server.auth.rules import Rule, rules_for
from aster.server.rpc.catalog import SERVICES
from aster.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    pool_pb2,
    pool_pb2_grpc,
    room_pb2,
    room_pb2_grpc,
    tool_pb2,
    tool_pb2_grpc,
    workflow_pb2,
    workflow_pb2_grpc,
)
from tests.auth_helpers import HS_SECRET, ISSUER, Signer, auth_env, cli_key
from tests.processes import Ports, Process, start_edge, start_server
from tests.rpc_errors import error_info, expect_error

Code = grpc.StatusCode


@dataclass
class SecureStack:
    ports: Ports
    data_dir: Path
    server: Process
    edge: Process
    signer: Signer
    admin_key: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    data_dir = tmp_path_factory.mktemp("secure")
    signer = Signer()
    env = auth_env(
        signer.write_jwks(data_dir / "jwks.json"),
        ASTER_RATE_LIMIT_RPS="1000",
        ASTER_RATE_LIMIT_BURST="1000",
    )
    ports = Ports()
    admin = cli_key(ports, data_dir, "ops", "admin", **env)
    server = start_server(ports, data_dir, **env)
    edge = start_edge(ports, data_dir, **env)
    yield SecureStack(ports, data_dir, server, edge, signer, admin)
    edge.stop()
    assert server.stop() == 0


def creds(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def channel(secure: SecureStack) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(secure.target) as chan:
        yield chan


async def make_key(
    channel: grpc.aio.Channel, admin: str, tenant: str, *scopes: str, **fields: object
) -> str:
    keys = auth_pb2_grpc.AuthServiceStub(channel)
    reply = await keys.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(
            api_key=auth_pb2.ApiKey(tenant=tenant, scopes=list(scopes), **fields)  # type: ignore[arg-type]
        ),
        metadata=creds(admin),
    )
    assert reply.secret.startswith("ak_")
    assert reply.api_key.prefix and reply.secret.startswith(reply.api_key.prefix)
    return reply.secret


async def test_calls_need_credentials_but_health_does_not(
    secure: SecureStack, channel: grpc.aio.Channel
) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    err = await expect_error(agents.ListAgents(agent_pb2.ListAgentsRequest()), Code.UNAUTHENTICATED)
    assert err.details() == "missing or invalid credentials"
    async with httpx.AsyncClient(base_url=secure.base) as http:
        assert (await http.get("/v1/agents")).status_code == 401
        assert (await http.get("/health")).status_code == 200


async def test_api_keys_by_header_or_bearer_and_scopes(
    secure: SecureStack, channel: grpc.aio.Channel
) -> None:
    writer = await make_key(channel, secure.admin_key, "t-keys", "agents.read", "agents.write")
    reader = await make_key(channel, secure.admin_key, "t-keys", "agents.read")
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    created = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="keyed")),
        metadata=creds(writer),
    )
    got = await agents.GetAgent(
        agent_pb2.GetAgentRequest(id=created.id), metadata=(("authorization", f"Bearer {reader}"),)
    )
    assert got.id == created.id
    err = await expect_error(
        agents.CreateAgent(
            agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="no")),
            metadata=creds(reader),
        ),
        Code.PERMISSION_DENIED,
    )
    assert "agents.write" in (err.details() or "")
    async with httpx.AsyncClient(base_url=secure.base) as http:
        response = await http.post(
            "/v1/agents", json={"display_name": "x"}, headers={"x-api-key": reader}
        )
        assert response.status_code == 403
        listed = await http.get("/v1/agents", headers={"authorization": f"Bearer {reader}"})
        assert listed.status_code == 200
        assert [a["id"] for a in listed.json()["agents"]] == [created.id]


async def test_api_key_negatives_look_the_same(
    secure: SecureStack, channel: grpc.aio.Channel
) -> None:
    keys = auth_pb2_grpc.AuthServiceStub(channel)
    good = await make_key(channel, secure.admin_key, "t-neg", "agents.read")
    expiring = await make_key(
        channel,
        secure.admin_key,
        "t-neg",
        "agents.read",
        expire_time=_in_seconds(1.0),
    )
    revoked = await make_key(channel, secure.admin_key, "t-neg", "agents.read")
    revoked_id = next(
        k.id
        for k in (
            await keys.ListApiKeys(
                auth_pb2.ListApiKeysRequest(tenant="t-neg"), metadata=creds(secure.admin_key)
            )
        ).api_keys
        if revoked.startswith(k.prefix)
    )
    result = await keys.RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(id=revoked_id), metadata=creds(secure.admin_key)
    )
    assert result.revoked
    await asyncio.sleep(1.2)  # the expiring key is now past its time
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    await agents.ListAgents(agent_pb2.ListAgentsRequest(), metadata=creds(good))
    wrong_secret = good[: good.rindex("_") + 1] + "x" * 43
    unknown = "ak_000000000000_" + "y" * 43
    messages = set()
    for bad in (wrong_secret, unknown, "ak_garbage", revoked, expiring, "not-a-key"):
        err = await expect_error(
            agents.ListAgents(agent_pb2.ListAgentsRequest(), metadata=creds(bad)),
            Code.UNAUTHENTICATED,
        )
        messages.add(err.details())
    # The same words whatever was wrong: nothing says whether a key exists.
    assert messages == {"missing or invalid credentials"}
    # Listing never shows a secret.
    listed = await keys.ListApiKeys(
        auth_pb2.ListApiKeysRequest(tenant="t-neg", show_revoked=True),
        metadata=creds(secure.admin_key),
    )
    assert len(listed.api_keys) == 3
    assert good not in str(listed)


def _in_seconds(seconds: float) -> object:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int((time.time() + seconds) * 1e9))
    return stamp


async def test_bad_key_requests(secure: SecureStack, channel: grpc.aio.Channel) -> None:
    keys = auth_pb2_grpc.AuthServiceStub(channel)
    err = await expect_error(
        keys.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(api_key=auth_pb2.ApiKey(tenant="t", scopes=["nope"])),
            metadata=creds(secure.admin_key),
        ),
        Code.INVALID_ARGUMENT,
    )
    assert error_info(err).metadata["field"] == "api_key.scopes"
    non_admin = await make_key(channel, secure.admin_key, "t-x", "agents.write")
    await expect_error(
        keys.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=creds(non_admin)),
        Code.PERMISSION_DENIED,
    )


async def test_jwt_accepted(secure: SecureStack, channel: grpc.aio.Channel) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    token = secure.signer.token(tenant="t-jwt")
    created = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="by-jwt")),
        metadata=bearer(token),
    )
    hs = jwt.encode(
        {
            "tenant": "t-jwt",
            "scp": ["agents.read"],
            "iss": ISSUER,
            "aud": "aster",
            "exp": int(time.time()) + 60,
        },
        HS_SECRET,
        algorithm="HS256",
    )
    got = await agents.GetAgent(agent_pb2.GetAgentRequest(id=created.id), metadata=bearer(hs))
    assert got.display_name == "by-jwt"
    await expect_error(
        agents.CreateAgent(
            agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="no")),
            metadata=bearer(hs),
        ),
        Code.PERMISSION_DENIED,
    )


def _negative_tokens(signer: Signer) -> dict[str, str]:
    now = int(time.time())
    base = {
        "tenant": "t-jwt",
        "scope": "agents.read",
        "iss": ISSUER,
        "aud": "aster",
        "exp": now + 60,
    }
    none_token = jwt.encode(base, key=None, algorithm="none")  # type: ignore[arg-type]
    confused = _hs_with(base, signer.public_pem)
    return {
        "alg_none": none_token,
        "hs256_with_rsa_public_key": confused,
        "expired": signer.token(exp=now - 3600),
        "not_yet_valid": signer.token(nbf=now + 3600),
        "wrong_issuer": signer.token(iss="https://evil.test"),
        "wrong_audience": signer.token(aud="someone-else"),
        "missing_exp": signer.token(exp=None),
        "unknown_kid": jwt.encode(
            base, signer.private, algorithm="RS256", headers={"kid": "other"}
        ),
        "garbage": "not.a.jwt",
        "no_tenant": signer.token(tenant=None),
    }


def _hs_with(claims: dict[str, object], key: bytes) -> str:
    """HS256 signed with the RSA public key: PyJWT refuses to make one, so
    sign by hand (the classic algorithm-confusion attack)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "test-key-1"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


async def test_jwt_negatives(secure: SecureStack, channel: grpc.aio.Channel) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    tokens = _negative_tokens(secure.signer)
    async with httpx.AsyncClient(base_url=secure.base) as http:
        for name, token in tokens.items():
            err = await expect_error(
                agents.ListAgents(agent_pb2.ListAgentsRequest(), metadata=bearer(token)),
                Code.UNAUTHENTICATED,
            )
            assert err.details() == "missing or invalid credentials", name
            response = await http.get("/v1/agents", headers={"authorization": f"Bearer {token}"})
            assert response.status_code == 401, name


async def test_tenants_never_see_each_other(secure: SecureStack, channel: grpc.aio.Channel) -> None:
    a = await make_key(channel, secure.admin_key, "tenant-a", "agents.read", "agents.write")
    b = await make_key(channel, secure.admin_key, "tenant-b", "agents.read", "agents.write")
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    mine = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="a's")), metadata=creds(a)
    )
    err = await expect_error(
        agents.GetAgent(agent_pb2.GetAgentRequest(id=mine.id), metadata=creds(b)), Code.NOT_FOUND
    )
    assert "not found" in (err.details() or "")
    page = await agents.ListAgents(agent_pb2.ListAgentsRequest(), metadata=creds(b))
    assert mine.id not in str(page)


async def test_no_secret_reaches_the_logs(secure: SecureStack, channel: grpc.aio.Channel) -> None:
    key = await make_key(channel, secure.admin_key, "t-log", "agents.read")
    token = secure.signer.token(tenant="t-log")
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    await agents.ListAgents(agent_pb2.ListAgentsRequest(), metadata=creds(key))
    await agents.ListAgents(agent_pb2.ListAgentsRequest(), metadata=bearer(token))
    async with httpx.AsyncClient(base_url=secure.base) as http:
        await http.get("/v1/agents", headers={"x-api-key": key})
        await http.get("/v1/agents", headers={"authorization": f"Bearer {token}"})
    await asyncio.sleep(0.5)  # let Envoy flush its access log
    logs = secure.server.log_path.read_text() + secure.edge.log_path.read_text()
    for secret in (key, key[len("ak_") + 13 :], token, secure.admin_key, HS_SECRET):
        assert secret not in logs
    # The access log says who called, by key id, not by key.
    assert '"tenant": "t-log"' in secure.server.log_path.read_text()


async def test_auth_failures_are_counted(secure: SecureStack, channel: grpc.aio.Channel) -> None:
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    await expect_error(
        agents.ListAgents(agent_pb2.ListAgentsRequest(), metadata=creds("ak_garbage")),
        Code.UNAUTHENTICATED,
    )
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"http://127.0.0.1:{secure.ports.metrics}/metrics")).text
    assert 'aster_auth_failures_total{reason="malformed_key"}' in metrics


def _methods() -> list[tuple[str, MethodDescriptor, Rule]]:
    services = [entry.descriptor() for entry in SERVICES]
    rules = rules_for(services)
    return [
        (f"/{s.full_name}/{m.name}", m, rules[f"/{s.full_name}/{m.name}"])
        for s in services
        for m in s.methods
    ]


async def _call(
    channel: grpc.aio.Channel, path: str, method: MethodDescriptor, request: Message, metadata: Any
) -> tuple[grpc.StatusCode, list[Message], str]:
    """The call's status code, its replies and its error message."""
    response_class = GetMessageClass(method.output_type)
    kwargs: dict[str, Any] = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": response_class.FromString,
    }
    try:
        if method.server_streaming:
            call = channel.unary_stream(path, **kwargs)(request, metadata=metadata, timeout=10)
            return Code.OK, [reply async for reply in call], ""
        reply = await channel.unary_unary(path, **kwargs)(request, metadata=metadata, timeout=10)
        return Code.OK, [reply], ""
    except grpc.aio.AioRpcError as err:
        return err.code(), [], err.details() or ""


async def test_a_missing_scope_is_permission_denied_for_every_rpc(
    secure: SecureStack, channel: grpc.aio.Channel
) -> None:
    memory_reader = await make_key(channel, secure.admin_key, "t-scopes", "memory.read")
    agent_reader = await make_key(channel, secure.admin_key, "t-scopes", "agents.read")
    checked = 0
    for path, method, rule in _methods():
        if rule.public:
            continue
        key = agent_reader if rule.scope == "memory.read" else memory_reader
        request = GetMessageClass(method.input_type)()
        code, _, _ = await _call(channel, path, method, request, creds(key))
        assert code == Code.PERMISSION_DENIED, f"{path} (needs {rule.scope}) gave {code.name}"
        checked += 1
    assert checked > 70


ID_RESOURCES = {
    "agent_id": "agent",
    "session_id": "session",
    "run_id": "run",
    "tool_id": "tool",
    "room_id": "room",
    "workflow_id": "workflow",
    "execution_id": "execution",
    "memory_id": "memory",
}
SERVICE_RESOURCE = {
    "AgentService": "agent",
    "SessionService": "session",
    "ToolService": "tool",
    "PoolService": "agent",
    "RoomService": "room",
    "WorkflowService": "workflow",
    "MemoryService": "working_entry",
}
# Required text fields get a harmless value, so that a call fails on the
# other tenant's ids rather than on a missing field.
FILLERS = {"message": "hello", "key": "k", "text": "hello", "query": "hello", "task": "hello"}
# Calls that create something: the ids naming the new thing are left alone.
CREATING = ("Create", "Add", "Set")


def _aim_at(request: Message, service: str, owned: dict[str, str], own_id: bool = True) -> bool:
    """Fills every id field of `request` (and of its message fields) with the
    other tenant's ids; True if any was set. Without `own_id` (Create calls),
    ids that name the new resource itself are left alone: `x.id`, ignored on
    Create, and the top-level proposed `x_id`."""
    aimed = False
    for field in request.DESCRIPTOR.fields:
        proposal = not own_id and request.DESCRIPTOR.name.startswith(CREATING)
        if field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated and not proposal:
            resource = ID_RESOURCES.get(field.name) or (
                SERVICE_RESOURCE.get(service) if field.name == "id" and own_id else None
            )
            if resource in owned:
                setattr(request, field.name, owned[resource])
                aimed = True
            elif field.name in FILLERS:
                setattr(request, field.name, FILLERS[field.name])
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
            nested = getattr(request, field.name)
            if field.message_type.full_name == "google.protobuf.Value":
                nested.string_value = "v"  # a required JSON value
            if field.message_type.full_name.startswith("aster.v1.") and _aim_at(
                nested, service, owned, own_id
            ):
                aimed = True
    return aimed


async def _tenant_a_owns_one_of_everything(
    channel: grpc.aio.Channel, metadata: Any, agent_id: str
) -> dict[str, str]:
    """A room, a workflow and its execution, a working-memory entry, a
    semantic memory and a pooled agent of tenant a."""
    rooms = room_pb2_grpc.RoomServiceStub(channel)
    room = await rooms.CreateRoom(
        room_pb2.CreateRoomRequest(
            room=room_pb2.Room(
                display_name="a's room",
                members=[room_pb2.RoomMember(agent_id=agent_id, role="leader")],
            )
        ),
        metadata=metadata,
    )
    workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
    workflow = await workflows.CreateWorkflow(
        workflow_pb2.CreateWorkflowRequest(
            workflow=json_format.ParseDict(
                {
                    "display_name": "a's workflow",
                    "steps": [
                        {"name": "sign_off", "approval": {"prompt": "a's secret approval"}},
                    ],
                },
                workflow_pb2.Workflow(),
            )
        ),
        metadata=metadata,
    )
    execution = await workflows.ExecuteWorkflow(
        workflow_pb2.ExecuteWorkflowRequest(workflow_id=workflow.id), metadata=metadata
    )
    memory = memory_pb2_grpc.MemoryServiceStub(channel)
    entry = await memory.SetWorkingMemory(
        memory_pb2.SetWorkingMemoryRequest(
            entry=memory_pb2.WorkingMemoryEntry(
                key="a-secret", value=struct_pb2.Value(string_value="a's value"), agent_id=agent_id
            )
        ),
        metadata=metadata,
    )
    remembered = await memory.AddMemory(
        memory_pb2.AddMemoryRequest(memory=memory_pb2.Memory(text="a's secret memory")),
        metadata=metadata,
    )
    await pool_pb2_grpc.PoolServiceStub(channel).CreatePooledAgent(
        pool_pb2.CreatePooledAgentRequest(agent_id=agent_id), metadata=metadata
    )
    return {
        "room": room.id,
        "workflow": workflow.id,
        "execution": execution.id,
        "working_entry": entry.id,
        "memory": remembered.id,
    }


async def test_cross_tenant_matrix(secure: SecureStack, channel: grpc.aio.Channel) -> None:
    everything = sorted(
        {rule.scope for _, _, rule in _methods() if rule.scope and rule.scope != "admin"}
    )
    a = await make_key(channel, secure.admin_key, "matrix-a", *everything)
    b = await make_key(channel, secure.admin_key, "matrix-b", *everything)
    agents = agent_pb2_grpc.AgentServiceStub(channel)
    agent = await agents.CreateAgent(
        agent_pb2.CreateAgentRequest(agent=agent_pb2.Agent(display_name="a-secret-agent")),
        metadata=creds(a),
    )
    run = await agents.RunAgent(
        agent_pb2.RunAgentRequest(agent_id=agent.id, message="a's words"), metadata=creds(a)
    )
    tools = tool_pb2_grpc.ToolServiceStub(channel)
    tool = await tools.CreateTool(
        tool_pb2.CreateToolRequest(
            tool=tool_pb2.Tool(
                name="a_tool",
                kind=tool_pb2.TOOL_KIND_HTTP,
                http=tool_pb2.HttpToolConfig(url="https://example.invalid/"),
            )
        ),
        metadata=creds(a),
    )
    owned = {"agent": agent.id, "session": run.run.session_id, "run": run.run.id, "tool": tool.id}
    owned.update(await _tenant_a_owns_one_of_everything(channel, creds(a), agent.id))
    tried = 0
    for path, method, rule in _methods():
        if rule.public or rule.scope == "admin":
            continue
        request = GetMessageClass(method.input_type)()
        own_id = not method.name.startswith(CREATING)
        if not _aim_at(request, method.containing_service.name, owned, own_id):
            continue
        code, replies, message = await _call(channel, path, method, request, creds(b))
        assert code in (Code.NOT_FOUND, Code.PERMISSION_DENIED), (
            f"{path} with tenant a's ids gave {code.name} to tenant b: {message}"
        )
        text = "".join(str(r) for r in replies)
        for value in owned.values():
            assert value not in text, f"{path} leaked {value}"
        tried += 1
    print(f"cross-tenant calls tried: {tried}")
    assert tried >= 60
    # Tenant A still sees all of it.
    assert (await agents.GetAgent(agent_pb2.GetAgentRequest(id=agent.id), metadata=creds(a))).id
