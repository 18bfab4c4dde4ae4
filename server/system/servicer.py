"""SystemService over gRPC."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import duration_pb2

from aster.server.clock import utcnow
from aster.server.errors import Unavailable
from aster.server.rpc.convert import timestamp
from aster.server.system.service import SystemService
from aster.server.tenancy import current_tenant
from aster.v1 import system_pb2, system_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class SystemServicer(system_pb2_grpc.SystemServiceServicer):
    """Server info and resource counts."""

    def __init__(self, service: SystemService) -> None:
        self._service = service

    async def GetInfo(
        self, request: system_pb2.GetInfoRequest, context: Context
    ) -> system_pb2.SystemInfo:
        info = self._service.info
        uptime = duration_pb2.Duration()
        uptime.FromNanoseconds(int(self._service.uptime_seconds() * 1e9))
        return system_pb2.SystemInfo(
            version=info.version,
            start_time=timestamp(info.start_time),
            uptime=uptime,
            storage_backend=info.storage_backend,
            event_bus=info.event_bus,
            features=info.features,
            workers=info.workers,
        )

    async def GetHealth(
        self, request: system_pb2.GetHealthRequest, context: Context
    ) -> system_pb2.HealthReport:
        report = await self._service.check_health()
        if not report.healthy:
            failed = ", ".join(k for k, v in report.checks.items() if v != "ok")
            raise Unavailable(f"unhealthy: {failed}")
        return system_pb2.HealthReport(
            status="healthy",
            checks={**report.checks, "timestamp": utcnow().isoformat().replace("+00:00", "Z")},
            version=self._service.info.version,
        )

    async def GetStats(
        self, request: system_pb2.GetStatsRequest, context: Context
    ) -> system_pb2.SystemStats:
        return system_pb2.SystemStats(
            resources=await self._service.resource_counts(current_tenant())
        )
