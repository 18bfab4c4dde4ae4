"""Turns errors raised by servicers and services into gRPC statuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from aster.server.errors import AsterError
from aster.server.rpc.handlers import ServerInterceptor, Streaming, Unary, wrap_handler
from aster.server.rpc.status import abort_with

_log = structlog.get_logger("aster.rpc")

INTERNAL_MESSAGE = "internal error; the server log has the details"


class ErrorInterceptor(ServerInterceptor):
    """AsterError → its status with ErrorInfo; anything unexpected → INTERNAL,
    logged with its traceback, and never leaked to the caller."""

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
        method = handler_call_details.method
        return wrap_handler(handler, _unary(method), _streaming(method))


async def _handle(method: str, context: grpc.aio.ServicerContext[Any, Any], err: Exception) -> None:
    if isinstance(err, AsterError):
        await abort_with(context, err)
    _log.error("unhandled error", method=method, exc_info=err)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _passes(err: BaseException) -> bool:
    # Aborts and cancellations are already a status; leave them alone.
    return isinstance(err, asyncio.CancelledError | grpc.aio.AbortError)


def _unary(method: str) -> Callable[[Unary], Unary]:
    def around(behavior: Unary) -> Unary:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behavior(request, context)
            except Exception as err:
                if _passes(err):
                    raise
                await _handle(method, context, err)

        return call

    return around


def _streaming(method: str) -> Callable[[Streaming], Streaming]:
    def around(behavior: Streaming) -> Streaming:
        async def call(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                async for item in behavior(request, context):
                    yield item
            except Exception as err:
                if _passes(err):
                    raise
                await _handle(method, context, err)

        return call

    return around
