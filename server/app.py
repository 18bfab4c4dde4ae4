"""Builds the grpc.aio server from its parts and runs it until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aster.server.agents.service import AgentService
from aster.server.agents.servicer import AgentServicer
from aster.server.auth.api_key_service import ApiKeyService
from aster.server.auth.authenticator import Authenticator
from aster.server.auth.interceptor import AuthInterceptor
from aster.server.auth.jwt_verifier import JwtSettings, JwtVerifier
from aster.server.auth.rules import Rule, known_scopes, rules_for
from aster.server.auth.servicer import AuthServicer
from aster.server.bus.base import EventBus
from aster.server.bus.in_process import InProcessBus
from aster.server.bus.redis_bus import RedisBus
from aster.server.clock import utcnow
from aster.server.config import Settings
from aster.server.errors import StartupError
from aster.server.limits import build_rate_limiter, build_token_usage
from aster.server.limits.base import RateLimiter
from aster.server.limits.interceptor import RateLimitInterceptor
from aster.server.limits.quotas import Quotas
from aster.server.limits.usage import TokenUsage
from aster.server.memory.semantic_servicer import SemanticMemory
from aster.server.memory.semantic_wiring import build_semantic_memory
from aster.server.memory.servicer import MemoryServicer
from aster.server.memory.working_service import ScopeChecker, WorkingMemoryService, purge_forever
from aster.server.memory.working_tools import WorkingMemoryTools
from aster.server.observability.metrics import MetricsInterceptor
from aster.server.pools.context import SessionContextLoader
from aster.server.pools.models import PoolSettings
from aster.server.pools.pool import AgentPool
from aster.server.pools.service import PoolService
from aster.server.pools.servicer import PoolServicer
from aster.server.providers.registry import ProviderRegistry
from aster.server.rooms.delegate import delegate_tool
from aster.server.rooms.runner import RoomRunner
from aster.server.rooms.service import RoomService
from aster.server.rooms.servicer import RoomServicer
from aster.server.rooms.voice import AgentVoice
from aster.server.rpc.catalog import SERVICES, service_names
from aster.server.rpc.deadline import UnaryDeadlineInterceptor
from aster.server.rpc.error_interceptor import ErrorInterceptor
from aster.server.runs.event_log import EventLog
from aster.server.runs.executor import RunExecutor
from aster.server.runs.limits import LeaseSettings, RunLimits
from aster.server.runs.service import RunService
from aster.server.sessions.service import SessionService
from aster.server.sessions.servicer import SessionServicer
from aster.server.storage.agent_repository import AgentRepository
from aster.server.storage.api_key_repository import ApiKeyRepository
from aster.server.storage.database import Database
from aster.server.storage.pool_repository import PoolRepository
from aster.server.storage.room_repository import RoomRepository
from aster.server.storage.run_repository import RunRepository
from aster.server.storage.session_repository import SessionRepository
from aster.server.storage.stream_repository import StreamRepository
from aster.server.storage.tool_repository import ToolRepository
from aster.server.storage.workflow_repository import WorkflowRepository
from aster.server.storage.working_memory_repository import WorkingMemoryRepository
from aster.server.streams.log import StreamLog
from aster.server.system.service import VERSION, ServerInfo, SystemService
from aster.server.system.servicer import SystemServicer
from aster.server.tools.http_executor import EnvOrFileSecrets
from aster.server.tools.service import ToolService
from aster.server.tools.servicer import ToolServicer
from aster.server.workflows.definition_service import WorkflowService
from aster.server.workflows.execution_service import ExecutionService, build_execution_service
from aster.server.workflows.scheduler import Scheduler
from aster.server.workflows.servicer import WorkflowServicer

_log = structlog.get_logger("aster.server")

# grpc-stubs does not know the asyncio health servicer.
AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]


@dataclass
class Components:
    """The services one server process hosts, and what they hold."""

    database: Database
    bus: EventBus
    agents: AgentService
    sessions: SessionService
    tools: ToolService
    providers: ProviderRegistry
    event_log: EventLog
    executor: RunExecutor
    runs: RunService
    system: SystemService
    api_keys: ApiKeyService
    authenticator: Authenticator
    rules: dict[str, Rule]
    limiter: RateLimiter
    streams: StreamLog
    working_memory: WorkingMemoryService
    pool: AgentPool
    pools: PoolService
    rooms: RoomService
    room_runner: RoomRunner
    semantic_memory: SemanticMemory
    workflows: WorkflowService
    executions: ExecutionService
    token_usage: TokenUsage
    scheduler: Scheduler

    async def close(self, grace_s: float) -> None:
        """Stops runs (background ones resume after a restart), then closes
        connections."""
        await self.room_runner.close()
        await self.scheduler.close()
        await self.executions.close()
        await self.executor.close(grace_s)
        await self.pool.close()
        await self.event_log.close()
        await self.providers.aclose()
        await self.semantic_memory.aclose()
        await self.bus.close()
        await self.limiter.close()
        await self.token_usage.close()
        await self.database.close()


def build_bus(settings: Settings) -> EventBus:
    """Redis (streams, and pub/sub for cancels) when ASTER_REDIS_URL is
    set, else in-process."""
    if not settings.redis_url:
        return InProcessBus()
    return RedisBus(
        settings.redis_url,
        stream_maxlen=settings.bus_stream_maxlen,
        stream_ttl_s=settings.bus_stream_ttl_s,
    )


def build_components(settings: Settings) -> Components:
    """Wires storage and services from the settings."""
    database = Database(settings.effective_database_url)
    bus = build_bus(settings)
    quotas = Quotas(
        max_agents=settings.quota_max_agents,
        max_concurrent_runs=settings.quota_max_concurrent_runs,
        max_tokens_per_day=settings.quota_max_tokens_per_day,
    )
    agents = AgentService(AgentRepository(database), quotas)
    session_repository = SessionRepository(database)
    sessions = SessionService(session_repository, agents)
    tools = ToolService(
        ToolRepository(database),
        egress_allow_hosts=settings.egress_allow_hosts,
        secrets=EnvOrFileSecrets(settings.effective_secrets_dir),
    )
    providers = ProviderRegistry(settings.effective_secrets_dir)
    working_memory = WorkingMemoryService(
        WorkingMemoryRepository(database),
        ScopeChecker(agents, sessions, RoomRepository(database)),
        max_value_bytes=settings.working_memory_max_value_bytes,
    )
    for tool in WorkingMemoryTools(working_memory).tools():
        tools.register_builtin(tool)
    run_repository = RunRepository(database)
    event_log = EventLog(run_repository, bus)
    limits = RunLimits(
        max_steps=settings.run_max_steps,
        max_tokens=settings.run_max_tokens,
        timeout_s=settings.run_timeout_s,
        max_input_chars=settings.max_input_chars,
    )
    pool_repository = PoolRepository(database)
    pool = AgentPool(
        pool_repository,
        agents,
        SessionContextLoader(session_repository, pool_repository),
        providers,
        PoolSettings(
            max_agents=settings.pool_max_agents,
            idle_s=settings.pool_idle_s,
            admission_timeout_s=settings.pool_admission_timeout_s,
            drain_timeout_s=settings.pool_drain_timeout_s,
        ),
    )
    executor = RunExecutor(
        run_repository,
        session_repository,
        agents,
        event_log,
        bus,
        providers,
        tools,
        limits,
        LeaseSettings(
            lease_s=settings.run_lease_s,
            poll_s=settings.queue_poll_s,
            max_attempts=settings.run_max_attempts,
        ),
        pool=pool,
    )
    token_usage = build_token_usage(settings.redis_url, run_repository.tokens_since)
    executor.token_usage = token_usage
    runs = RunService(
        run_repository,
        sessions,
        agents,
        tools,
        event_log,
        executor,
        limits,
        quotas,
        token_usage=token_usage,
    )
    semantic_memory = build_semantic_memory(
        settings,
        database,
        agents=agents,
        providers=providers,
        tools=tools,
        executor=executor,
        scopes=ScopeChecker(agents, sessions, RoomRepository(database)),
        working=working_memory,
    )
    streams = StreamLog(StreamRepository(database), bus)
    room_repository = RoomRepository(database)
    room_runner = RoomRunner(room_repository, streams, bus, settings.run_lease_s)
    rooms = RoomService(
        room_repository,
        streams,
        agents,
        AgentVoice(providers, tools, settings.run_max_steps),
        room_runner,
        settings.room_max_turns,
    )
    tools.register_builtin(delegate_tool())
    features = ["reflection"] if settings.reflection_enabled else []
    info = ServerInfo(
        version=VERSION,
        start_time=utcnow(),
        storage_backend=database.backend,
        event_bus=bus.name,
        features=tuple(features),
        workers=settings.workers,
    )
    system = SystemService(info, database, agents, sessions, bus)
    rules = rules_for([entry.descriptor() for entry in SERVICES])
    api_keys = ApiKeyService(ApiKeyRepository(database), known_scopes(rules))
    authenticator = Authenticator(
        api_keys if "api_key" in settings.auth_methods else None,
        JwtVerifier(jwt_settings(settings)) if "jwt" in settings.auth_methods else None,
    )
    workflow_repository = WorkflowRepository(database)
    workflows = WorkflowService(workflow_repository, agents, tools)
    lease = LeaseSettings(
        lease_s=settings.run_lease_s,
        poll_s=settings.queue_poll_s,
        max_attempts=settings.run_max_attempts,
    )
    executions = build_execution_service(database, streams, bus, tools, runs, workflows, lease)
    return Components(
        database,
        bus,
        agents,
        sessions,
        tools,
        providers,
        event_log,
        executor,
        runs,
        system,
        api_keys,
        authenticator,
        rules,
        build_rate_limiter(settings.redis_url),
        streams,
        working_memory=working_memory,
        pool=pool,
        pools=PoolService(pool_repository, pool, agents),
        rooms=rooms,
        room_runner=room_runner,
        semantic_memory=semantic_memory,
        workflows=workflows,
        executions=executions,
        token_usage=token_usage,
        scheduler=Scheduler(
            workflow_repository,
            executions,
            interval_s=settings.workflow_scheduler_interval_s,
            grace_s=settings.workflow_schedule_grace_s,
        ),
    )


def jwt_settings(settings: Settings) -> JwtSettings:
    """How JWTs are checked, from the settings."""
    return JwtSettings(
        algorithms=settings.jwt_algorithm_list,
        secret=settings.jwt_secret,
        jwks_file=settings.jwt_jwks_file,
        jwks_url=settings.jwt_jwks_url,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway_s=settings.jwt_leeway_s,
        tenant_claim=settings.jwt_tenant_claim,
        scope_claims=[c.strip() for c in settings.jwt_scope_claims.split(",") if c.strip()],
    )


KEEPALIVE_MIN_CLIENT_PING_MS = 10_000
MAX_CONNECTION_AGE_MS = 600_000
# Longer than ASTER_RUN_TIMEOUT_S by default, so streams end with their run.
MAX_CONNECTION_AGE_GRACE_MS = 660_000


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel options of the server: message limits and port sharing."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Only worker processes of one server share the port (ASTER_WORKERS);
        # otherwise a second server on a taken port must fail, not join it.
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        # Keepalive: the server pings idle clients every 60 s; a client that
        # pings more often than every 10 s gets GOAWAY after two strikes.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MIN_CLIENT_PING_MS),
        ("grpc.http2.max_ping_strikes", 2),
        # Clients that bypass the edge reconnect now and then, so new
        # replicas get their share; in-flight calls get a grace period.
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
    ]


def servicers(components: Components) -> dict[str, object]:
    """The servicer of every Aster service, by service name."""
    return {
        "AgentService": AgentServicer(components.agents, components.runs, components.pools),
        "SessionService": SessionServicer(components.sessions),
        "RoomService": RoomServicer(components.rooms),
        "ToolService": ToolServicer(components.tools),
        "SystemService": SystemServicer(components.system),
        "PoolService": PoolServicer(components.pools),
        "AuthService": AuthServicer(components.api_keys),
        "MemoryService": MemoryServicer(components.working_memory, components.semantic_memory),
        "WorkflowService": WorkflowServicer(components.workflows, components.executions),
    }


def build_server(
    settings: Settings, components: Components
) -> tuple[grpc.aio.Server, AsyncHealthServicer]:
    """A server with every service, health and (optionally) reflection."""
    server = grpc.aio.server(
        interceptors=[
            MetricsInterceptor(),
            AuthInterceptor(components.rules, components.authenticator),
            *(
                [
                    RateLimitInterceptor(
                        components.rules,
                        components.limiter,
                        settings.rate_limit_rps,
                        settings.rate_limit_burst,
                    )
                ]
                if components.authenticator.enabled
                else []
            ),
            ErrorInterceptor(),
            UnaryDeadlineInterceptor(settings.max_unary_deadline_s),
        ],
        options=server_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )
    implemented = servicers(components)
    for entry in SERVICES:
        module = entry.grpc_module()
        getattr(module, f"add_{entry.name}Servicer_to_server")(implemented[entry.name], server)

    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection_enabled:
        names = [*service_names(), health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    return server, health_servicer


LIVENESS_SERVICE = "aster.liveness"
READINESS_INTERVAL_S = 2.0


async def set_ready(health_servicer: AsyncHealthServicer, ready: bool) -> None:
    """Readiness: the server as a whole (`""`) and every service are SERVING
    while the dependencies answer, NOT_SERVING otherwise."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if ready
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ["", *service_names()]:
        await health_servicer.set(name, status)


async def watch_readiness(health_servicer: AsyncHealthServicer, system: SystemService) -> None:
    """Keeps readiness in step with the database (and Redis) checks."""
    ready = True
    while True:
        await asyncio.sleep(READINESS_INTERVAL_S)
        report = await system.check_health()
        if report.healthy != ready:
            ready = report.healthy
            _log.warning("readiness changed", ready=ready, checks=report.checks)
            await set_ready(health_servicer, ready)


async def prune_events(runs: RunService, executions: ExecutionService, retention_s: float) -> None:
    """Deletes the events of runs and of workflow executions that ended more
    than `retention_s` ago, now and then."""
    interval = min(600.0, retention_s / 2)
    while True:
        for what, source in (("run", runs), ("execution", executions)):
            try:
                removed = await source.prune_events(retention_s)
                if removed:
                    _log.info(f"pruned {what} events", events=removed)
            except Exception as err:
                _log.warning(f"pruning {what} events failed", error=str(err))
        await asyncio.sleep(interval)


async def drain(stop: asyncio.Event, drain_s: float) -> None:
    """Keeps serving for `drain_s` while health says NOT_SERVING, so that
    balancers stop sending calls before the server refuses them: gRPC cancels
    calls that reached a stopping server before any handler took them
    (grpc/grpc#41785), and a client sees those as CANCELLED. A second signal
    ends the drain at once."""
    if drain_s <= 0:
        return
    stop.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(drain_s):
            await stop.wait()


async def run_server(
    settings: Settings,
    *,
    migrate: bool = True,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serves until SIGTERM/SIGINT, then shuts down gracefully: health goes
    NOT_SERVING, new RPCs are refused, in-flight ones get the grace period."""
    from aster.server.storage import migrate as migrations

    components = build_components(settings)
    if migrate and settings.auto_migrate:
        await migrations.upgrade(components.database)
    else:
        await migrations.require_current(components.database)
    await components.executor.start()
    await components.pool.start()
    await components.room_runner.start()
    await components.executions.start()
    components.scheduler.start()
    server, health_servicer = build_server(settings, components)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as err:
        raise StartupError(f"cannot listen on {address}: is another server running?") from err
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    # Liveness: SERVING while the process serves, whatever its dependencies.
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await set_ready(health_servicer, True)
    readiness = asyncio.create_task(watch_readiness(health_servicer, components.system))
    pruning = asyncio.create_task(
        prune_events(components.runs, components.executions, settings.event_retention_s)
    )
    purging = asyncio.create_task(
        purge_forever(components.working_memory, settings.working_memory_purge_s)
    )
    if not components.authenticator.enabled:
        _log.warning(
            "AUTHENTICATION IS OFF (ASTER_AUTH_MODE=none): every caller is admin of tenant "
            "'default'. Never expose this server; set ASTER_AUTH_MODE for production."
        )
    _log.info(
        "serving",
        auth=settings.auth_mode,
        mode=settings.mode.value,
        grpc_port=port,
        storage=components.database.backend,
        reflection=settings.reflection_enabled,
    )
    if on_ready is not None:
        on_ready(port)
    try:
        await stop.wait()
    finally:
        drain_s = settings.shutdown_drain_seconds
        _log.info("shutting down", drain_s=drain_s, grace_s=settings.shutdown_grace_s)
        await health_servicer.enter_graceful_shutdown()
        components.executor.stop_taking_runs()
        await drain(stop, drain_s)
        pruning.cancel()
        purging.cancel()
        readiness.cancel()
        await server.stop(settings.shutdown_grace_s)
        await components.close(grace_s=0)
        _log.info("stopped")
