"""Every service of the Aster API, and where its generated code lives."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor


@dataclass(frozen=True)
class ServiceEntry:
    """One service: its generated modules and the area that implements it."""

    module: str
    name: str
    area: str

    @property
    def full_name(self) -> str:
        """The service's full proto name, for example `aster.v1.AgentService`."""
        return f"aster.v1.{self.name}"

    def descriptor(self) -> ServiceDescriptor:
        """The service's descriptor."""
        module: Any = importlib.import_module(f"aster.v1.{self.module}_pb2")
        service: ServiceDescriptor = module.DESCRIPTOR.services_by_name[self.name]
        return service

    def grpc_module(self) -> ModuleType:
        """The generated `_pb2_grpc` module."""
        return importlib.import_module(f"aster.v1.{self.module}_pb2_grpc")


SERVICES = (
    ServiceEntry("agent", "AgentService", "runs"),
    ServiceEntry("session", "SessionService", "sessions"),
    ServiceEntry("pool", "PoolService", "pools"),
    ServiceEntry("room", "RoomService", "rooms"),
    ServiceEntry("memory", "MemoryService", "memory"),
    ServiceEntry("workflow", "WorkflowService", "workflows"),
    ServiceEntry("tool", "ToolService", "tools"),
    ServiceEntry("system", "SystemService", "system"),
    ServiceEntry("auth", "AuthService", "auth"),
)


def service_names() -> list[str]:
    """The full names of every Aster service."""
    return [entry.full_name for entry in SERVICES]
