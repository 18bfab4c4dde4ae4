"""Authenticates every call and checks the scope its RPC declares; sets the
caller (and so the tenant) for the services below."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import Token
from typing import Any

import grpc

from aster.server.auth.authenticator import Authenticator
from aster.server.auth.models import CredentialsRejected, Principal
from aster.server.auth.rules import Rule
from aster.server.errors import AsterError, PermissionDenied
from aster.server.observability import aster_metrics
from aster.server.observability.call_context import current_call
from aster.server.rpc.handlers import ServerInterceptor, Streaming, Unary, wrap_handler
from aster.server.rpc.status import abort_with
from aster.server.tenancy import enter, leave

Context = grpc.aio.ServicerContext[Any, Any]


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    return {
        key: value for key, value in (details.invocation_metadata or ()) if isinstance(value, str)
    }


class AuthInterceptor(ServerInterceptor):
    """UNAUTHENTICATED without valid credentials, PERMISSION_DENIED without
    the RPC's scope. Health and reflection are not Aster RPCs and pass."""

    def __init__(self, rules: Mapping[str, Rule], authenticator: Authenticator) -> None:
        self._rules = rules
        self._authenticator = authenticator

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
        metadata = _metadata(handler_call_details)

        async def admit() -> Token[Principal | None]:
            principal = await self._authenticator.authenticate(metadata)
            call = current_call()
            if call is not None:
                call.tenant, call.subject = principal.tenant, principal.subject
                call.auth_method = principal.method
            if not principal.allows(rule.scope):
                aster_metrics.AUTH_FAILURES.labels(reason="missing_scope").inc()
                raise PermissionDenied(
                    f"this call needs the scope {rule.scope!r}", scope=rule.scope
                )
            return enter(principal)

        async def refuse(context: Context, err: AsterError) -> None:
            if isinstance(err, CredentialsRejected):
                aster_metrics.AUTH_FAILURES.labels(reason=err.cause).inc()
            await abort_with(context, err)

        def around_unary(behavior: Unary) -> Unary:
            async def call(request: Any, context: Context) -> Any:
                try:
                    token = await admit()
                except AsterError as err:
                    await refuse(context, err)
                    raise
                try:
                    return await behavior(request, context)
                finally:
                    leave(token)

            return call

        def around_streaming(behavior: Streaming) -> Streaming:
            async def call(request: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    token = await admit()
                except AsterError as err:
                    await refuse(context, err)
                    raise
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    leave(token)

            return call

        return wrap_handler(handler, around_unary, around_streaming)
