"""Every service of the Aster API, and where its generated code lives."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor


@dataclass(frozen=True)
class ServiceEntry:
    """One service and its generated modules."""

    module: str
    name: str

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
    ServiceEntry("agent", "AgentService"),
    ServiceEntry("session", "SessionService"),
    ServiceEntry("pool", "PoolService"),
    ServiceEntry("room", "RoomService"),
    ServiceEntry("memory", "MemoryService"),
    ServiceEntry("workflow", "WorkflowService"),
    ServiceEntry("tool", "ToolService"),
    ServiceEntry("system", "SystemService"),
    ServiceEntry("auth", "AuthService"),
)


def service_names() -> list[str]:
    """The full names of every Aster service."""
    return [entry.full_name for entry in SERVICES]
