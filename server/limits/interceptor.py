"""Charges every authenticated call to its tenant's and its key's token
buckets; an empty bucket is RESOURCE_EXHAUSTED with a RetryInfo."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from aster.server.auth.rules import Rule
from aster.server.errors import ResourceExhausted
from aster.server.limits.base import RateLimiter, acquire_all
from aster.server.observability import aster_metrics
from aster.server.rpc.handlers import ServerInterceptor, Streaming, Unary, wrap_handler
from aster.server.rpc.status import abort_with
from aster.server.tenancy import current_principal

Context = grpc.aio.ServicerContext[Any, Any]


class RateLimitInterceptor(ServerInterceptor):
    """Runs inside the auth interceptor, so it knows the caller."""

    def __init__(
        self, rules: Mapping[str, Rule], limiter: RateLimiter, rate: float, burst: int
    ) -> None:
        self._rules = rules
        self._limiter = limiter
        self._rate = rate
        self._burst = burst

    async def _charge(self, context: Context) -> None:
        principal = current_principal()
        if principal is None:
            return
        keys = [f"tenant:{principal.tenant}"]
        if principal.subject:
            keys.append(f"{principal.method}:{principal.subject}")
        decision = await acquire_all(self._limiter, keys, self._rate, self._burst)
        if decision.allowed:
            return
        bucket = (decision.limited_by or "tenant").split(":", 1)[0]
        aster_metrics.RATE_LIMITED.labels(bucket=bucket).inc()
        await abort_with(
            context,
            ResourceExhausted(
                f"rate limit of {self._rate:g} requests/s (burst {self._burst}) reached for "
                f"this {bucket}; retry in {decision.retry_after_s:.2f} s",
                retry_after_s=max(decision.retry_after_s, 0.001),
                bucket=bucket,
            ),
        )

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        rule = self._rules.get(handler_call_details.method)
        if handler is None or rule is None or rule.public:
            return handler

        def around_unary(behavior: Unary) -> Unary:
            async def call(request: Any, context: Context) -> Any:
                await self._charge(context)
                return await behavior(request, context)

            return call

        def around_streaming(behavior: Streaming) -> Streaming:
            async def call(request: Any, context: Context) -> AsyncIterator[Any]:
                await self._charge(context)
                async for item in behavior(request, context):
                    yield item

            return call

        return wrap_handler(handler, around_unary, around_streaming)
