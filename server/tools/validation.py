"""The rules a tool definition and a tool's arguments must satisfy; errors
name the offending field."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from jsonschema import validators
from jsonschema.exceptions import SchemaError, best_match

from aster.server.display_text import check_description
from aster.server.errors import InvalidArgument
from aster.server.labels import validate_labels
from aster.server.providers.base import EMPTY_OBJECT_SCHEMA
from aster.server.tools.models import HttpToolConfig, ToolDefinition, ToolKind

MAX_PARAMETERS_BYTES = 64 * 1024
MAX_URL = 2_048
MAX_HEADERS = 32
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_METHOD = "POST"
DEFAULT_TIMEOUT = timedelta(seconds=10)
MAX_TIMEOUT = timedelta(seconds=60)
DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024
MAX_RESPONSE_BYTES = 10 * 1024 * 1024
# Plain http:// is accepted only for these hosts, so tests and local
# development can use a server on the same machine.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Headers the server sets itself, or that would break the request.
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "idempotency-key"}
)

_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,63}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_MAX_ERROR_TEXT = 300


def _fail(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", field=field)


def normalized(definition: ToolDefinition) -> ToolDefinition:
    """A copy of `definition` with its HTTP method upper-cased and defaulted
    to POST, as it is stored."""
    if definition.kind is not ToolKind.HTTP:
        return definition
    method = definition.http.method.strip().upper() or DEFAULT_METHOD
    return dataclasses.replace(definition, http=dataclasses.replace(definition.http, method=method))


def validate_tool_definition(definition: ToolDefinition, prefix: str = "tool") -> None:
    """Raises InvalidArgument for the first field of a caller's tool that
    breaks a rule. Builtin tools cannot be defined by callers."""
    if not definition.name:
        raise _fail(f"{prefix}.name", "is required")
    if not _NAME.match(definition.name):
        raise _fail(
            f"{prefix}.name",
            f"{definition.name[:80]!r} must be 1-64 letters, digits, '_' or '-', "
            "starting with a letter",
        )
    check_description(definition.description, f"{prefix}.description")
    check_parameters_schema(definition.parameters, f"{prefix}.parameters")
    if definition.kind is ToolKind.UNSPECIFIED:
        raise _fail(f"{prefix}.kind", "is required; use TOOL_KIND_HTTP")
    if definition.kind is ToolKind.BUILTIN:
        raise _fail(
            f"{prefix}.kind",
            "builtin tools are provided by the server and cannot be created or changed; "
            "use TOOL_KIND_HTTP",
        )
    validate_http_config(definition.http, f"{prefix}.http")
    validate_labels(definition.labels, f"{prefix}.labels")


def check_parameters_schema(schema: dict[str, Any], field: str) -> None:
    """Raises InvalidArgument unless `schema` is empty (no arguments) or a
    valid JSON Schema of an object."""
    if not schema:
        return
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError) as err:
        raise _fail(field, f"is not JSON: {err}") from None
    if size > MAX_PARAMETERS_BYTES:
        raise _fail(field, f"must be at most {MAX_PARAMETERS_BYTES} bytes of JSON")
    if "$schema" in schema and validators.validator_for(schema, default=None) is None:  # type: ignore[arg-type]
        raise _fail(field, f"unknown $schema {str(schema['$schema'])[:120]!r}")
    validator = validators.validator_for(schema)
    try:
        validator.check_schema(schema)
    except SchemaError as err:
        where = "/".join(str(p) for p in err.path)
        at = f" at {where!r}" if where else ""
        raise _fail(field, f"is not a valid JSON Schema{at}: {_short(err.message)}") from None
    if schema.get("type") != "object":
        raise _fail(field, 'must be the schema of an object ("type": "object")')


def validate_http_config(config: HttpToolConfig, prefix: str) -> None:
    """Raises InvalidArgument for the first field of an HTTP tool's config
    that breaks a rule."""
    if not config.url:
        raise _fail(f"{prefix}.url", "is required for TOOL_KIND_HTTP")
    check_tool_url(config.url, f"{prefix}.url")
    method = config.method.strip().upper() or DEFAULT_METHOD
    if method not in HTTP_METHODS:
        raise _fail(f"{prefix}.method", f"{config.method[:20]!r} is not one of {HTTP_METHODS}")
    if len(config.headers) > MAX_HEADERS:
        raise _fail(f"{prefix}.headers", f"at most {MAX_HEADERS} headers")
    for name, ref in config.headers.items():
        if not _HEADER_NAME.match(name):
            raise _fail(f"{prefix}.headers", f"{name[:80]!r} is not a header name")
        if name.lower() in RESERVED_HEADERS:
            raise _fail(f"{prefix}.headers", f"{name!r} is set by the server")
        where = f"{prefix}.headers[{name}]"
        if bool(ref.env) == bool(ref.file):
            raise _fail(where, "must name either an environment variable (env) or a file (file)")
        if ref.env and not _ENV_NAME.match(ref.env):
            raise _fail(f"{where}.env", "is not an environment variable name")
        if ref.file and not _FILE_NAME.match(ref.file):
            raise _fail(f"{where}.file", "must be a plain file name in the secrets directory")
    if config.timeout is not None and not (timedelta(0) < config.timeout <= MAX_TIMEOUT):
        raise _fail(
            f"{prefix}.timeout",
            f"must be positive and at most {MAX_TIMEOUT.total_seconds():g}s",
        )
    if config.max_response_bytes < 0:
        raise _fail(f"{prefix}.max_response_bytes", "must not be negative")
    if config.max_response_bytes > MAX_RESPONSE_BYTES:
        raise _fail(f"{prefix}.max_response_bytes", f"must be at most {MAX_RESPONSE_BYTES}")


def check_tool_url(url: str, field: str) -> None:
    """Raises InvalidArgument unless `url` is an absolute https:// URL (or
    http:// to the local machine) without credentials."""
    if len(url) > MAX_URL:
        raise _fail(field, f"must be at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise _fail(field, f"{url[:120]!r} is not a URL") from None
    if parts.scheme not in {"https", "http"} or not host:
        raise _fail(field, f"{url[:120]!r} must be an absolute https:// URL")
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
        raise _fail(field, "must be an https:// URL (plain http:// is accepted only for localhost)")
    if parts.username is not None or parts.password is not None:
        raise _fail(field, "must not contain credentials; send them as headers with SecretRefs")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise _fail(field, "must not contain spaces or control characters")


def effective_timeout(config: HttpToolConfig) -> float:
    """The seconds one call of the tool may take."""
    return (config.timeout or DEFAULT_TIMEOUT).total_seconds()


def effective_max_response_bytes(config: HttpToolConfig) -> int:
    """The largest response body the tool may return."""
    return config.max_response_bytes or DEFAULT_MAX_RESPONSE_BYTES


def argument_error(parameters: dict[str, Any], arguments: Any) -> str:
    """Why `arguments` do not satisfy the tool's `parameters` schema, or ""."""
    schema = parameters or EMPTY_OBJECT_SCHEMA
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, not {type(arguments).__name__}"
    try:
        cls = validators.validator_for(schema)
        validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
        error = best_match(validator.iter_errors(arguments))
    except Exception as err:  # an unresolvable $ref, a pathological pattern...
        return f"arguments cannot be checked against the tool's parameters: {_short(str(err))}"
    if error is None:
        return ""
    message = error.message
    quoted = repr(error.instance)
    if len(quoted) > 60:
        # "'<a long value>' is too long": keep the reason readable.
        message = message.replace(quoted, quoted[:40] + "...")
    return f"arguments do not match the tool's parameters at {error.json_path}: {_short(message)}"


def _short(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."
