"""Prometheus metrics: the standard `grpc_server_*` series (definitions reused
from py-grpc-prometheus, which has no asyncio interceptor) and the HTTP
endpoint that serves them."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import Token
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client import multiprocess as prometheus_multiprocess
from py_grpc_prometheus import server_metrics

from aster.server.observability.call_context import CallInfo, begin, end, request_id_from
from aster.server.rpc.handlers import ServerInterceptor, Streaming, Unary, wrap_handler

_log = structlog.get_logger("aster.access")

Context = grpc.aio.ServicerContext[Any, Any]
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
        metadata = {
            k: v for k, v in (handler_call_details.invocation_metadata or ()) if isinstance(v, str)
        }
        request_id = request_id_from(metadata)
        return wrap_handler(
            handler,
            lambda behavior: self._unary(behavior, service, method, request_id),
            lambda behavior: self._streaming(behavior, service, method, request_id),
        )

    def _begin(
        self, labels: dict[str, str], context: Context, request_id: str
    ) -> tuple[_Call, Token[CallInfo | None]]:
        self._metrics["grpc_server_started_counter"].labels(**labels).inc()
        # Read the peer now: grpcio crashes reading it from a cancelled call.
        call = _Call(labels, context.peer(), time.perf_counter(), CallInfo(request_id))
        return call, begin(call.info)

    def _finish(self, call: _Call, context: Context, failed: BaseException | None) -> None:
        elapsed = time.perf_counter() - call.started
        code = _code_of(context, failed)
        self._handled.labels(**call.labels, grpc_code=code).inc()
        self._metrics["grpc_server_handled_histogram"].labels(**call.labels).observe(elapsed)
        _log.info(
            "rpc",
            service=call.labels["grpc_service"],
            method=call.labels["grpc_method"],
            code=code,
            duration_ms=round(elapsed * 1000, 3),
            peer=call.peer,
            request_id=call.info.request_id,
            tenant=call.info.tenant,
            key_id=call.info.subject if call.info.auth_method == "api_key" else "",
            subject=call.info.subject if call.info.auth_method == "jwt" else "",
        )

    def _unary(self, behavior: Unary, service: str, method: str, request_id: str) -> Unary:
        labels = {"grpc_type": UNARY, "grpc_service": service, "grpc_method": method}

        async def call(request: Any, context: Context) -> Any:
            state, token = self._begin(labels, context, request_id)
            failed: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as err:
                failed = err
                raise
            finally:
                self._finish(state, context, failed)
                end(token)

        return call

    def _streaming(
        self, behavior: Streaming, service: str, method: str, request_id: str
    ) -> Streaming:
        labels = {"grpc_type": SERVER_STREAM, "grpc_service": service, "grpc_method": method}
        sent = self._metrics["grpc_server_stream_msg_sent"].labels(**labels)

        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            state, token = self._begin(labels, context, request_id)
            failed: BaseException | None = None
            try:
                async for item in behavior(request, context):
                    sent.inc()
                    yield item
            except BaseException as err:
                failed = err
                raise
            finally:
                self._finish(state, context, failed)
                end(token)

        return call


@dataclass
class _Call:
    labels: dict[str, str]
    peer: str
    started: float
    info: CallInfo


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
