"""Answers UNIMPLEMENTED, naming the area, for RPCs whose area has not landed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from aster.server.errors import NotImplementedYet


def _pending(method: MethodDescriptor, area: str) -> Callable[..., Any]:
    verb = "is" if area == "memory" else "are"
    message = f"{area} {verb} not implemented yet ({method.full_name})"

    if method.server_streaming:

        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            raise NotImplementedYet(message)
            yield  # pragma: no cover - makes this an async generator

        return stream

    async def unary(self: Any, request: Any, context: Any) -> Any:
        raise NotImplementedYet(message)

    return unary


def _implements(servicer: type[Any], name: str) -> bool:
    # The generated base classes define every RPC; only our classes count.
    return any(
        name in vars(cls) for cls in servicer.__mro__ if cls.__module__.startswith("aster.server")
    )


def with_pending_methods(
    servicer: type[Any],
    service: ServiceDescriptor,
    default_area: str,
    areas: Mapping[str, str] | None = None,
) -> type[Any]:
    """`servicer` with every RPC of `service` it does not define answering
    UNIMPLEMENTED with "<area> are not implemented yet"."""
    areas = areas or {}
    namespace = {
        m.name: _pending(m, areas.get(m.name, default_area))
        for m in service.methods
        if not _implements(servicer, m.name)
    }
    return type(servicer.__name__, (servicer,), namespace)
