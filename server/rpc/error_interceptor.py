"""Turns errors raised by servicers and services into gRPC statuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from aster.server.errors import AsterError, InvalidArgument
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
        return wrap_handler(handler, _unary(method), _streaming(method), _tolerant)


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not parse."""

    problem: str


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A deserializer that hands bad bytes on as MalformedRequest (grpc.aio
    would answer UNKNOWN); the call then fails with INVALID_ARGUMENT."""

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as err:
            return MalformedRequest(str(err)[:200])

    return parse


def _check(request: Any) -> None:
    if isinstance(request, MalformedRequest):
        raise InvalidArgument(f"the request could not be parsed: {request.problem}")


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
                _check(request)
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
                _check(request)
                async for item in behavior(request, context):
                    yield item
            except Exception as err:
                if _passes(err):
                    raise
                await _handle(method, context, err)

        return call

    return around
