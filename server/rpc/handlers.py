"""Wraps the behaviour of a grpc.aio method handler, so interceptors can run
code around every call without knowing its streaming shape."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor

Unary = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Streaming = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    around_unary: Callable[[Unary], Unary],
    around_streaming: Callable[[Streaming], Streaming],
    around_deserializer: Callable[[Any], Any] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler whose behaviour is wrapped by `around_unary` (unary
    responses) or `around_streaming` (streamed responses), and optionally
    its request deserializer by `around_deserializer`."""
    behaviors: Any = handler  # grpc-stubs types the behaviours as synchronous
    deserializer = handler.request_deserializer
    if around_deserializer is not None and deserializer is not None:
        deserializer = around_deserializer(deserializer)
    codecs = {
        "request_deserializer": deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(around_unary(behaviors.unary_unary), **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            around_streaming(_as_async_iterator(behaviors.unary_stream)), **codecs
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(around_unary(behaviors.stream_unary), **codecs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(
            around_streaming(_as_async_iterator(behaviors.stream_stream)), **codecs
        )
    return handler


def _as_async_iterator(behavior: Any) -> Streaming:
    """Streaming behaviours are async generators, or coroutines that write
    with `context.write()`; present both as async iterators."""
    if inspect.isasyncgenfunction(behavior):
        return behavior  # type: ignore[no-any-return]

    async def iterate(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        result = behavior(request, context)
        if inspect.isawaitable(result):
            result = await result
        if result is not None:
            async for item in result:
                yield item

    return iterate
