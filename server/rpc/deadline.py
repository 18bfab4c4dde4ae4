"""A server-side ceiling on how long a unary call may run, whatever deadline
the client sent (or none)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from aster.server.rpc.handlers import ServerInterceptor, Streaming, Unary, wrap_handler

Context = grpc.aio.ServicerContext[Any, Any]


class UnaryDeadlineInterceptor(ServerInterceptor):
    """Unary calls running longer than `limit_s` end with DEADLINE_EXCEEDED;
    streams are left alone (they end with their run)."""

    def __init__(self, limit_s: float) -> None:
        self._limit_s = limit_s

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        limit = self._limit_s

        def around_unary(behavior: Unary) -> Unary:
            async def call(request: Any, context: Context) -> Any:
                try:
                    async with asyncio.timeout(limit):
                        return await behavior(request, context)
                except TimeoutError:
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the call ran longer than the server's limit of {limit:g} s "
                        "(ASTER_MAX_UNARY_DEADLINE_S)",
                    )

            return call

        def unchanged(behavior: Streaming) -> Streaming:
            return behavior

        return wrap_handler(handler, around_unary, unchanged)
