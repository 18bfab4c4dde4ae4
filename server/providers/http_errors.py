"""How a model provider's HTTP failures become Aster errors.

Shared by the SDK providers so that both map the same status to the same
error, and neither leaks the API key into a message."""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping

from aster.server.errors import (
    AsterError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

# Provider messages are quoted in errors; long ones are cut here.
MAX_DETAIL_CHARS = 300
REDACTED = "[redacted]"


def redact(text: str, secret: str) -> str:
    """`text` without `secret` (and cut to a readable length)."""
    if secret:
        text = text.replace(secret, REDACTED)
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 3] + "..."
    return text


def error_detail(body: object, fallback: str) -> str:
    """The human part of a provider's error body: `error.message` in both the
    OpenAI and the Anthropic shape, else `fallback`."""
    if isinstance(body, Mapping):
        inner = body.get("error")
        if isinstance(inner, Mapping):
            body = inner
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
    if isinstance(body, str) and body.strip():
        return body.strip()
    return fallback


def error_type(body: object) -> str:
    """The machine-readable kind of a provider's error body (`error.type`), or ""."""
    if isinstance(body, Mapping):
        inner = body.get("error")
        if isinstance(inner, Mapping):
            body = inner
        kind = body.get("type")
        if isinstance(kind, str):
            return kind
    return ""


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait according to `retry-after-ms` or `retry-after`
    (seconds or an HTTP date); None if absent or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return value if math.isfinite(value) and value >= 0 else None


def error_for_status(
    provider: str,
    status: int,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    secret: str = "",
) -> AsterError:
    """The Aster error for an HTTP `status` returned by `provider`.

    401 is Unauthenticated, 403 PermissionDenied, 429 ResourceExhausted (with
    the retry-after header), 408/5xx Unavailable, any other 4xx
    InvalidArgument; `detail` is quoted with `secret` removed."""
    detail = redact(detail, secret)
    meta = {"provider": provider, "http_status": str(status)}
    if status == 401:
        return Unauthenticated(f"{provider} rejected the API key (HTTP 401): {detail}", **meta)
    if status == 403:
        return PermissionDenied(
            f"{provider} denied the request for this API key (HTTP 403): {detail}", **meta
        )
    if status == 429:
        return ResourceExhausted(
            f"{provider} is rate limiting this API key (HTTP 429): {detail}",
            retry_after_s=parse_retry_after(headers or {}),
            provider=provider,
            http_status="429",
        )
    if status == 408 or status >= 500:
        return Unavailable(f"{provider} failed (HTTP {status}): {detail}", **meta)
    if 400 <= status < 500:
        return InvalidArgument(f"{provider} rejected the request (HTTP {status}): {detail}", **meta)
    return Unavailable(f"{provider} answered with HTTP {status}: {detail}", **meta)


def error_for_stream_error(
    provider: str, kind: str, detail: str, *, secret: str = ""
) -> AsterError:
    """The Aster error for an error event inside an already started stream
    (HTTP status 200), judged by the provider's error type."""
    detail = redact(detail, secret)
    meta = {"provider": provider}
    if kind in {"rate_limit_error", "rate_limit_exceeded", "insufficient_quota"}:
        return ResourceExhausted(
            f"{provider} is rate limiting this API key: {detail}", provider=provider
        )
    if kind in {"invalid_request_error", "not_found_error", "request_too_large"}:
        return InvalidArgument(f"{provider} rejected the request: {detail}", **meta)
    if kind in {"authentication_error"}:
        return Unauthenticated(f"{provider} rejected the API key: {detail}", **meta)
    if kind in {"permission_error"}:
        return PermissionDenied(f"{provider} denied the request: {detail}", **meta)
    return Unavailable(f"{provider} failed mid-stream: {detail}", **meta)
