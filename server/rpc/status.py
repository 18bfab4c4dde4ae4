"""The one mapping from Aster errors to gRPC statuses with rich details."""

from __future__ import annotations

from typing import Any

import google.rpc.error_details_pb2 as error_details_pb2
import google.rpc.status_pb2 as status_pb2
import grpc
from google.protobuf import any_pb2, duration_pb2
from grpc_status import rpc_status

from aster.server.errors import AsterError, ResourceExhausted

ERROR_DOMAIN = "aster.dev"


def status_for(error: AsterError) -> grpc.Status:
    """The status for `error`: its code and message, with a
    `google.rpc.ErrorInfo` detail (reason, domain and metadata such as the
    field), and a `google.rpc.RetryInfo` when a limit says when to retry."""
    code = grpc.StatusCode[error.code]
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
        )
    )
    details = [detail]
    if isinstance(error, ResourceExhausted) and error.retry_after_s:
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    message = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return rpc_status.to_status(message)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: AsterError) -> None:
    """Ends the call with the status of `error`."""
    status = status_for(error)
    await context.abort(status.code, status.details, status.trailing_metadata)
