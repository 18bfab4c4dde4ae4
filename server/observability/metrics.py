"""Prometheus metrics: the standard `grpc_server_*` series (definitions reused
from py-grpc-prometheus, which has no asyncio interceptor) and the HTTP
endpoint that serves them."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client import multiprocess as prometheus_multiprocess
from py_grpc_prometheus import server_metrics

from aster.server.rpc.handlers import ServerInterceptor, Streaming, Unary, wrap_handler

_log = structlog.get_logger("aster.access")

UNARY = "UNARY"
SERVER_STREAM = "SERVER_STREAMING"


class MetricsInterceptor(ServerInterceptor):
    """Counts and times every RPC, and writes one access-log line per call."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import REGISTRY

        target = registry or REGISTRY
        self._metrics = server_metrics.init_metrics(target)
        self._handled = server_metrics.get_grpc_server_handled_counter(False, target)

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
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        return wrap_handler(
            handler,
            lambda behavior: self._unary(behavior, service, method),
            lambda behavior: self._streaming(behavior, service, method),
        )

    def _labels(self, kind: str, service: str, method: str) -> dict[str, str]:
        return {"grpc_type": kind, "grpc_service": service, "grpc_method": method}

    def _finish(
        self,
        labels: dict[str, str],
        context: grpc.aio.ServicerContext[Any, Any],
        peer: str,
        started: float,
        failed: BaseException | None,
    ) -> None:
        elapsed = time.perf_counter() - started
        code = _code_of(context, failed)
        self._handled.labels(**labels, grpc_code=code).inc()
        self._metrics["grpc_server_handled_histogram"].labels(**labels).observe(elapsed)
        _log.info(
            "rpc",
            service=labels["grpc_service"],
            method=labels["grpc_method"],
            code=code,
            duration_ms=round(elapsed * 1000, 3),
            peer=peer,
        )

    def _unary(self, behavior: Unary, service: str, method: str) -> Unary:
        labels = self._labels(UNARY, service, method)

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._metrics["grpc_server_started_counter"].labels(**labels).inc()
            # Read the peer now: grpcio crashes reading it from a cancelled call.
            peer = context.peer()
            started = time.perf_counter()
            failed: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as err:
                failed = err
                raise
            finally:
                self._finish(labels, context, peer, started, failed)

        return call

    def _streaming(self, behavior: Streaming, service: str, method: str) -> Streaming:
        labels = self._labels(SERVER_STREAM, service, method)

        async def call(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            self._metrics["grpc_server_started_counter"].labels(**labels).inc()
            sent = self._metrics["grpc_server_stream_msg_sent"].labels(**labels)
            peer = context.peer()
            started = time.perf_counter()
            failed: BaseException | None = None
            try:
                async for item in behavior(request, context):
                    sent.inc()
                    yield item
            except BaseException as err:
                failed = err
                raise
            finally:
                self._finish(labels, context, peer, started, failed)

        return call


def _code_of(context: grpc.aio.ServicerContext[Any, Any], failed: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return _code_name(code)
    if failed is None:
        return "OK"
    return "CANCELLED" if isinstance(failed, asyncio.CancelledError) else "UNKNOWN"


def _code_name(value: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == value:
            return status.name
    return "UNKNOWN"


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Serves /metrics on `port`. With PROMETHEUS_MULTIPROC_DIR set (several
    worker processes), the samples of every worker are merged."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        start_http_server(port, addr=host, registry=registry)
    else:
        start_http_server(port, addr=host)
