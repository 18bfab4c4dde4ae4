"""The tools built into the server, visible in every tenant: `get_time`,
`calculator` and `http_request` (off unless hosts are allowed)."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from simpleeval import InvalidExpression, SimpleEval  # type: ignore[import-untyped]

from aster.server.clock import utcnow
from aster.server.tools.http_executor import fetch
from aster.server.tools.models import Tool, ToolDefinition, ToolError, ToolKind
from aster.server.tools.validation import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT,
    RESERVED_HEADERS,
)

# Builtins sort before every stored tool: they were "created" at the epoch.
BUILTIN_CREATE_TIME = datetime(1970, 1, 1, tzinfo=UTC)

GET_TIME = "get_time"
CALCULATOR = "calculator"
HTTP_REQUEST = "http_request"

MAX_EXPRESSION = 500
# The largest integer (in bits) a calculator step may produce: 2**4096 has
# 1,234 digits, and arithmetic on numbers that size stays instantaneous.
MAX_INTEGER_BITS = 4096
_TIMEZONE = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,2}$")
HTTP_REQUEST_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")

Runner = Callable[[Mapping[str, Any], str], Awaitable[Any]]


@dataclass(frozen=True)
class BuiltinTool:
    """A builtin tool: what the model sees and the coroutine that runs it
    (arguments, idempotency key) -> JSON output, raising ToolError."""

    id: str
    description: str
    parameters: dict[str, Any]
    run: Runner

    def as_tool(self) -> Tool:
        """The tool as the registry shows it."""
        definition = ToolDefinition(
            name=self.id,
            description=self.description,
            parameters=self.parameters,
            kind=ToolKind.BUILTIN,
        )
        return Tool(
            id=self.id,
            definition=definition,
            create_time=BUILTIN_CREATE_TIME,
            update_time=BUILTIN_CREATE_TIME,
        )


# get_time -------------------------------------------------------------------


def current_time(timezone: str = "UTC") -> str:
    """The current time in `timezone` (an IANA name) as ISO 8601."""
    if not _TIMEZONE.match(timezone) or len(timezone) > 64:
        raise ToolError(f"timezone {timezone[:80]!r} is not an IANA time zone name")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolError(
            f"unknown timezone {timezone!r}; use an IANA name such as 'Europe/Paris'"
        ) from None
    return utcnow().astimezone(zone).isoformat(timespec="seconds")


async def _get_time(arguments: Mapping[str, Any], _key: str) -> Any:
    return current_time(arguments.get("timezone") or "UTC")


# calculator -----------------------------------------------------------------


def _checked(value: Any) -> Any:
    """`value` if it is a real number of a sane size; ToolError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ToolError(f"the result is not a real number ({type(value).__name__})")
    if isinstance(value, int) and value.bit_length() > MAX_INTEGER_BITS:
        raise ToolError(f"a number exceeds {MAX_INTEGER_BITS} bits")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    return value


def _safe_power(base: Any, exponent: Any) -> Any:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and abs(base) > 1
        and exponent * math.log2(abs(base)) > MAX_INTEGER_BITS
    ):
        raise ToolError(f"{base} ** {exponent} is too large")
    return _checked(operator.pow(base, exponent))


def _step(function: Callable[..., Any]) -> Callable[..., Any]:
    def checked(*args: Any) -> Any:
        return _checked(function(*args))

    return checked


_OPERATORS: dict[type[ast.AST], Callable[..., Any]] = {
    ast.Add: _step(operator.add),
    ast.Sub: _step(operator.sub),
    ast.Mult: _step(operator.mul),
    ast.Div: _step(operator.truediv),
    ast.FloorDiv: _step(operator.floordiv),
    ast.Mod: _step(operator.mod),
    ast.Pow: _safe_power,
    ast.USub: _step(operator.neg),
    ast.UAdd: _step(operator.pos),
}

_MATH: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "floor": math.floor,
    "ceil": math.ceil,
}
_FUNCTIONS = {name: _step(function) for name, function in _MATH.items()}

_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


class _Arithmetic(SimpleEval):  # type: ignore[misc]
    """simpleeval restricted to numbers, + - * / // % **, a few math
    functions and constants: no names, attributes, subscripts, strings,
    comparisons or keyword arguments."""

    def __init__(self) -> None:
        super().__init__(operators=dict(_OPERATORS), functions=dict(_FUNCTIONS), names={})
        self.nodes = {
            ast.Expression: self._eval_expression,
            ast.UnaryOp: self._eval_unaryop,
            ast.BinOp: self._eval_binop,
            ast.Constant: self._eval_number,
            ast.Name: self._eval_constant_name,
            ast.Call: self._eval_function_call,
        }

    def _eval_expression(self, node: ast.Expression) -> Any:
        return self._eval(node.body)

    @staticmethod
    def _eval_number(node: ast.Constant) -> Any:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolError(f"only numbers are allowed, not {value!r:.40}")
        return _checked(value)

    @staticmethod
    def _eval_constant_name(node: ast.Name) -> Any:
        if node.id not in _CONSTANTS:
            raise ToolError(
                f"unknown name {node.id!r}; the constants are {', '.join(sorted(_CONSTANTS))}"
            )
        return _CONSTANTS[node.id]

    def _eval_function_call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else "this call"
            raise ToolError(
                f"{name!r:.40} is not an available function; use one of "
                + ", ".join(sorted(_FUNCTIONS))
            )
        if node.keywords:
            raise ToolError("keyword arguments are not allowed")
        return _FUNCTIONS[node.func.id](*(self._eval(arg) for arg in node.args))


def calculate(expression: str) -> int | float:
    """Evaluates an arithmetic expression safely (no eval): numbers,
    + - * / // % ** and parentheses, the constants pi, e and tau, and the
    functions abs, round, min, max, sqrt, exp, log, log10, log2, sin, cos,
    tan, asin, acos, atan, atan2, floor and ceil. ToolError if it is not one,
    is longer than MAX_EXPRESSION characters, or a step gets too large."""
    text = expression.strip()
    if not text:
        raise ToolError("the expression is empty")
    if len(text) > MAX_EXPRESSION:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(text, mode="eval")
        result = _Arithmetic().eval(text, previously_parsed=tree)
    except ToolError as err:
        raise ToolError(f"cannot evaluate {text[:80]!r}: {err}") from None
    except SyntaxError:
        raise ToolError(
            f"cannot evaluate {text[:80]!r}: it is not an arithmetic expression"
        ) from None
    except (InvalidExpression, ArithmeticError, ValueError, TypeError, RecursionError) as err:
        reason = str(err) or type(err).__name__
        raise ToolError(f"cannot evaluate {text[:80]!r}: {reason[:200]}") from None
    value: int | float = _checked(result)
    if isinstance(value, int) and abs(value) > 2**53:
        # JSON numbers are doubles on the wire; say so instead of rounding silently.
        try:
            return float(value)
        except OverflowError:
            raise ToolError(f"cannot evaluate {text[:80]!r}: the result is too large") from None
    return value


async def _calculator(arguments: Mapping[str, Any], _key: str) -> Any:
    expression = arguments.get("expression")
    if not isinstance(expression, str):
        raise ToolError("expression must be a string")
    return calculate(expression)


# http_request ---------------------------------------------------------------


def parse_allow_hosts(text: str) -> tuple[str, ...]:
    """The hosts of `ASTER_EGRESS_ALLOW_HOSTS` (comma-separated, lower-cased)."""
    return tuple(host.strip().lower() for host in text.split(",") if host.strip())


def host_allowed(url: str, allow_hosts: Collection[str]) -> bool:
    """Whether `url`'s host is on the allow-list. An entry `example.com`
    allows that host on any port, `example.com:8443` only that port, and
    `*.example.com` every subdomain of example.com (not example.com itself)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    if not host:
        return False
    for entry in allow_hosts:
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif entry in {host, f"{host}:{port}", f"[{host}]:{port}"}:
            return True
    return False


class HttpRequestTool:
    """The `http_request` builtin: an HTTP call to a host on the server's
    egress allow-list. Redirects are not followed."""

    def __init__(
        self,
        allow_hosts: Collection[str],
        *,
        timeout_s: float = DEFAULT_TIMEOUT.total_seconds(),
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.allow_hosts = tuple(allow_hosts)
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self._transport = transport

    async def __call__(self, arguments: Mapping[str, Any], idempotency_key: str) -> Any:
        url = arguments.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ToolError("url must be an absolute http:// or https:// URL")
        if not self.allow_hosts:
            raise ToolError(
                "http_request is disabled on this server: no host is on its egress allow-list "
                "(ASTER_EGRESS_ALLOW_HOSTS)"
            )
        if not host_allowed(url, self.allow_hosts):
            host = urlsplit(url).hostname or "?"
            raise ToolError(f"host {host!r} is not on this server's egress allow-list")
        method = str(arguments.get("method") or "GET").upper()
        if method not in HTTP_REQUEST_METHODS:
            raise ToolError(f"method must be one of {', '.join(HTTP_REQUEST_METHODS)}")
        headers = {
            str(k): str(v)
            for k, v in (arguments.get("headers") or {}).items()
            if str(k).lower() not in RESERVED_HEADERS
        }
        if idempotency_key:
            headers["idempotency-key"] = idempotency_key
        body = arguments.get("body")
        response = await fetch(
            method,
            url,
            headers=headers,
            timeout_s=self.timeout_s,
            max_bytes=self.max_response_bytes,
            content=body.encode() if isinstance(body, str) else None,
            json_body=body if body is not None and not isinstance(body, str) else None,
            transport=self._transport,
        )
        return {
            "status": response.status,
            "content_type": response.content_type,
            "body": response.decoded(),
        }


_GET_TIME_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "timezone": {
            "type": "string",
            "description": "An IANA time zone name such as 'Europe/Paris'; default UTC.",
        }
    },
    "additionalProperties": False,
}
_CALCULATOR_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "expression": {
            "type": "string",
            "maxLength": MAX_EXPRESSION,
            "description": "An arithmetic expression, for example '2 * (3 + 4) ** 0.5'.",
        }
    },
    "required": ["expression"],
    "additionalProperties": False,
}
_HTTP_REQUEST_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "description": "An absolute http:// or https:// URL."},
        "method": {"type": "string", "enum": list(HTTP_REQUEST_METHODS), "default": "GET"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "body": {"description": "A JSON value (sent as JSON) or a string (sent as is)."},
    },
    "required": ["url"],
    "additionalProperties": False,
}


def builtin_tools(http_request: HttpRequestTool) -> dict[str, BuiltinTool]:
    """Every builtin tool by id, in id order."""
    tools = [
        BuiltinTool(
            GET_TIME,
            "Returns the current date and time in ISO 8601, in UTC or the given time zone.",
            _GET_TIME_PARAMETERS,
            _get_time,
        ),
        BuiltinTool(
            CALCULATOR,
            "Evaluates an arithmetic expression: numbers, + - * / // % ** and parentheses, "
            "the constants pi, e and tau, and the functions " + ", ".join(sorted(_FUNCTIONS)) + ".",
            _CALCULATOR_PARAMETERS,
            _calculator,
        ),
        BuiltinTool(
            HTTP_REQUEST,
            "Sends an HTTP request to a host on the server's egress allow-list and returns "
            "the status, content type and body.",
            _HTTP_REQUEST_PARAMETERS,
            http_request,
        ),
    ]
    return {tool.id: tool for tool in sorted(tools, key=lambda t: t.id)}


BUILTIN_IDS = frozenset({GET_TIME, CALCULATOR, HTTP_REQUEST})
