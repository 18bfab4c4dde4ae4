"""Calls HTTP tools with httpx, under a timeout and a response size cap.

Header values come from SecretRefs and are never logged or put in errors."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from aster.server.tools.models import HttpToolConfig, SecretRef, ToolError
from aster.server.tools.validation import effective_max_response_bytes, effective_timeout

USER_AGENT = "aster-tools/0.1"
# The default secrets directory (`ASTER_SECRETS_DIR`: <data_dir>/secrets).
DEFAULT_SECRETS_DIR = Path(".aster") / "secrets"
MAX_ERROR_BODY = 500

# Reads the value of a secret; raises (LookupError, OSError...) with a message
# that names the secret but never contains its value.
SecretResolver = Callable[[SecretRef], str]


class EnvOrFileSecrets:
    """Reads a SecretRef from the server's environment or from a file in its
    secrets directory (trailing newlines stripped)."""

    def __init__(self, secrets_dir: Path) -> None:
        self._dir = secrets_dir

    def __call__(self, ref: SecretRef) -> str:
        if ref.env:
            value = os.environ.get(ref.env)
            if value is None:
                raise LookupError(f"environment variable {ref.env!r} is not set")
            return value
        if not ref.file or "/" in ref.file or ref.file in {".", ".."}:
            raise LookupError("the secret names neither an environment variable nor a file")
        path = self._dir / ref.file
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as err:
            raise LookupError(
                f"secret file {ref.file!r} cannot be read ({err.strerror or type(err).__name__})"
            ) from None


@dataclass(frozen=True)
class HttpResponse:
    """A response whose body was read in full (within the cap)."""

    status: int
    content_type: str
    body: bytes

    def decoded(self) -> Any:
        """The body as JSON if it says it is JSON (and parses), else as
        text; None when it is empty."""
        if not self.body:
            return None
        text = self.body.decode("utf-8", errors="replace")
        if "json" in self.content_type.lower():
            try:
                return json.loads(text)
            except ValueError:
                return text
        return text

    def excerpt(self) -> str:
        """The start of the body, for error messages."""
        text = self.body[: MAX_ERROR_BODY * 4].decode("utf-8", errors="replace").strip()
        return text if len(text) <= MAX_ERROR_BODY else text[:MAX_ERROR_BODY] + "..."


async def fetch(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    max_bytes: int,
    params: Mapping[str, Any] | None = None,
    json_body: Any = None,
    content: bytes | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> HttpResponse:
    """Sends one request without following redirects and reads the response;
    ToolError on a timeout (of the whole exchange), a transport failure or a
    body larger than `max_bytes`."""
    host = urlsplit(url).hostname or "?"
    try:
        async with (
            asyncio.timeout(timeout_s),
            httpx.AsyncClient(
                timeout=timeout_s, follow_redirects=False, transport=transport
            ) as client,
        ):
            request = client.build_request(
                method,
                url,
                headers={"user-agent": USER_AGENT, **headers},
                params=params,
                json=json_body,
                content=content,
            )
            response = await client.send(request, stream=True)
            try:
                return await _read_capped(response, max_bytes)
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        raise ToolError(f"the request to {host} timed out after {timeout_s:g}s") from None
    except httpx.HTTPError as err:
        raise ToolError(f"the request to {host} failed: {_describe(err)}") from None
    except (ValueError, TypeError, UnicodeError) as err:
        # httpx rejects header values with newlines and the like; say which
        # kind of problem without repeating the value.
        raise ToolError(f"the request to {host} could not be sent: {type(err).__name__}") from None


async def _read_capped(response: httpx.Response, max_bytes: int) -> HttpResponse:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ToolError(f"the response is larger than the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ToolError(f"the response is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return HttpResponse(
        response.status_code, response.headers.get("content-type", ""), b"".join(chunks)
    )


def _describe(err: httpx.HTTPError) -> str:
    if isinstance(err, httpx.LocalProtocolError):
        # Its message may quote a header value, which may be a secret.
        return "the request is not valid HTTP (check the headers)"
    text = str(err) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def query_params(arguments: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """Arguments as query parameters: scalars as text, lists of scalars as
    repeated parameters, anything else as JSON; nulls are left out."""
    params: dict[str, str | list[str]] = {}
    for key, value in arguments.items():
        if value is None:
            continue
        if isinstance(value, list) and all(_is_scalar(v) for v in value):
            params[key] = [_scalar_text(v) for v in value if v is not None]
        elif _is_scalar(value):
            params[key] = _scalar_text(value)
        else:
            params[key] = json.dumps(value, separators=(",", ":"))
    return params


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class HttpToolExecutor:
    """Calls the endpoint of an HTTP tool: the arguments go as the JSON body
    (as query parameters for GET), the headers are read from their secrets,
    and a non-2xx answer is a failure."""

    def __init__(
        self, secrets: SecretResolver, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._secrets = secrets
        self._transport = transport

    async def call(
        self, config: HttpToolConfig, arguments: Mapping[str, Any], idempotency_key: str = ""
    ) -> Any:
        """The endpoint's decoded response body; ToolError on any failure."""
        headers = {"accept": "application/json"}
        for name, ref in config.headers.items():
            try:
                value = self._secrets(ref)
            except Exception as err:
                raise ToolError(f"header {name!r} is unavailable: {err}") from None
            if any(c in value for c in "\r\n\0"):
                raise ToolError(f"header {name!r} has an invalid value (a line break)")
            headers[name] = value.strip()
        if idempotency_key:
            headers["idempotency-key"] = idempotency_key
        method = config.method or "POST"
        get = method == "GET"
        response = await fetch(
            method,
            config.url,
            headers=headers,
            timeout_s=effective_timeout(config),
            max_bytes=effective_max_response_bytes(config),
            params=query_params(arguments) if get else None,
            json_body=None if get else dict(arguments),
            transport=self._transport,
        )
        if not 200 <= response.status < 300:
            note = " (redirects are not followed)" if 300 <= response.status < 400 else ""
            excerpt = response.excerpt()
            raise ToolError(
                f"the endpoint answered HTTP {response.status}{note}"
                + (f": {excerpt}" if excerpt else "")
            )
        return response.decoded()
