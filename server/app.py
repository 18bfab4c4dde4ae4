"""Builds the grpc.aio server from its parts and runs it until a signal."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aster.server.agents.service import AgentService
from aster.server.agents.servicer import PENDING_AREAS, PENDING_DEFAULT_AREA, AgentServicer
from aster.server.clock import utcnow
from aster.server.config import Settings
from aster.server.errors import StartupError
from aster.server.observability.metrics import MetricsInterceptor
from aster.server.rpc.catalog import SERVICES, service_names
from aster.server.rpc.error_interceptor import ErrorInterceptor
from aster.server.rpc.pending import with_pending_methods
from aster.server.storage.agent_repository import AgentRepository
from aster.server.storage.database import Database
from aster.server.system.service import VERSION, ServerInfo, SystemService
from aster.server.system.servicer import SystemServicer

_log = structlog.get_logger("aster.server")

# grpc-stubs does not know the asyncio health servicer.
AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]


@dataclass
class Components:
    """The services one server process hosts, and what they hold."""

    database: Database
    agents: AgentService
    system: SystemService


def build_components(settings: Settings) -> Components:
    """Wires storage and services from the settings."""
    database = Database(settings.effective_database_url)
    agents = AgentService(AgentRepository(database))
    features = ["reflection"] if settings.reflection else []
    info = ServerInfo(
        version=VERSION,
        start_time=utcnow(),
        storage_backend=database.backend,
        event_bus="redis" if settings.redis_url else "in_process",
        features=tuple(features),
        workers=settings.workers,
    )
    return Components(database, agents, SystemService(info, database, agents))


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel options of the server: message limits and port sharing."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Only worker processes of one server share the port (ASTER_WORKERS);
        # otherwise a second server on a taken port must fail, not join it.
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def build_server(
    settings: Settings, components: Components
) -> tuple[grpc.aio.Server, AsyncHealthServicer]:
    """A server with every service, health and (optionally) reflection."""
    server = grpc.aio.server(
        interceptors=[MetricsInterceptor(), ErrorInterceptor()],
        options=server_options(settings),
    )
    implemented: dict[str, object] = {
        "AgentService": with_pending_methods(
            AgentServicer, SERVICES[0].descriptor(), PENDING_DEFAULT_AREA, PENDING_AREAS
        )(components.agents),
        "SystemService": SystemServicer(components.system),
    }
    for entry in SERVICES:
        module = entry.grpc_module()
        servicer = implemented.get(entry.name)
        if servicer is None:
            base = getattr(module, f"{entry.name}Servicer")
            servicer = with_pending_methods(base, entry.descriptor(), entry.area)()
        getattr(module, f"add_{entry.name}Servicer_to_server")(servicer, server)

    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if settings.reflection:
        names = [*service_names(), health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)
    return server, health_servicer


async def set_serving(health_servicer: AsyncHealthServicer) -> None:
    """Marks every service, and the server as a whole (`""`), SERVING."""
    for name in ["", *service_names()]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


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
    if migrate:
        await migrations.upgrade(components.database)
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
    await set_serving(health_servicer)
    _log.info(
        "serving",
        grpc_port=port,
        storage=components.database.backend,
        reflection=settings.reflection,
    )
    if on_ready is not None:
        on_ready(port)
    try:
        await stop.wait()
    finally:
        _log.info("shutting down", grace_s=settings.shutdown_grace_s)
        await health_servicer.enter_graceful_shutdown()
        await server.stop(settings.shutdown_grace_s)
        await components.database.close()
        _log.info("stopped")
