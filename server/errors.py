"""The errors services raise. Each carries the gRPC status code name it maps
to; `aster.server.rpc.status` turns them into statuses. Nothing here imports
gRPC, so services stay free of it."""

from __future__ import annotations

from typing import ClassVar


class AsterError(Exception):
    """Base of every error a caller is meant to see."""

    code: ClassVar[str] = "UNKNOWN"
    reason: ClassVar[str] = "ERROR"

    def __init__(self, message: str, *, field: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.metadata = dict(metadata)
        if field:
            self.metadata.setdefault("field", field)


class InvalidArgument(AsterError):
    """The request is malformed; `field` names the offending field."""

    code = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"


class NotFound(AsterError):
    """The resource does not exist (or belongs to another tenant)."""

    code = "NOT_FOUND"
    reason = "NOT_FOUND"


class AlreadyExists(AsterError):
    """A resource with the proposed id exists already."""

    code = "ALREADY_EXISTS"
    reason = "ALREADY_EXISTS"


class EtagMismatch(AsterError):
    """The caller's etag is stale: someone changed the resource meanwhile."""

    code = "ABORTED"
    reason = "ETAG_MISMATCH"


class FailedPrecondition(AsterError):
    """The resource is not in a state that allows the call."""

    code = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"


class Unavailable(AsterError):
    """A dependency (database, provider) is down; the call may be retried."""

    code = "UNAVAILABLE"
    reason = "UNAVAILABLE"


class StartupError(RuntimeError):
    """The server cannot start (port taken, database unreachable, unknown
    schema); the message says why, and `aster serve` prints it and exits 1."""


class Unauthenticated(AsterError):
    """Missing or bad credentials (the caller's, or a provider's API key)."""

    code = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class PermissionDenied(AsterError):
    """The credentials are valid but not allowed to do this."""

    code = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"


class ResourceExhausted(AsterError):
    """A limit or quota is reached; `retry_after_s`, if known, says when to retry."""

    code = "RESOURCE_EXHAUSTED"
    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        retry_after_s: float | None = None,
        **metadata: str,
    ) -> None:
        super().__init__(message, field=field, **metadata)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(AsterError):
    """The call or the run took longer than allowed."""

    code = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXCEEDED"
