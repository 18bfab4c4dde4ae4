"""The rules of the tools area: the registry (create, read, list, update,
delete, with the builtin tools visible in every tenant) and execution."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from aster.server.clock import as_utc, utcnow
from aster.server.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from aster.server.etags import check_etag
from aster.server.ids import check_id, new_id
from aster.server.pagination import Cursor, decode_token, encode_token, page_size
from aster.server.providers.base import EMPTY_OBJECT_SCHEMA, ToolSpec
from aster.server.storage.tool_repository import ToolRepository, not_found
from aster.server.tools.builtins import (
    BuiltinTool,
    HttpRequestTool,
    builtin_tools,
    parse_allow_hosts,
)
from aster.server.tools.filters import parse_tool_filter
from aster.server.tools.http_executor import (
    DEFAULT_SECRETS_DIR,
    EnvOrFileSecrets,
    HttpToolExecutor,
    SecretResolver,
)
from aster.server.tools.models import Tool, ToolDefinition, ToolError, ToolOutcome
from aster.server.tools.validation import (
    argument_error,
    normalized,
    validate_tool_definition,
)
from aster.server.update_mask import apply_update_mask

_log = structlog.get_logger("aster.tools")

ID_PREFIX = "tool"
UPDATABLE_PATHS = frozenset(
    {
        "name",
        "description",
        "parameters",
        "kind",
        "http",
        "http.url",
        "http.method",
        "http.headers",
        "http.timeout",
        "http.max_response_bytes",
        "labels",
        "metadata",
    }
)
MAX_IDEMPOTENCY_KEY = 255
# How many recent idempotent calls each process remembers.
IDEMPOTENCY_MEMORY = 4096


# `ToolService.list` shadows the builtin inside the class body.
_Tools = list[Tool]
_Specs = list[ToolSpec]


@dataclass(frozen=True)
class ToolPage:
    """One page of ListTools."""

    tools: list[Tool]
    next_page_token: str


@dataclass
class _Remembered:
    fingerprint: str
    task: asyncio.Task[ToolOutcome]


def tool_spec(tool: Tool) -> ToolSpec:
    """What a model is told about `tool`; a tool without parameters gets
    the schema of an empty object."""
    definition = tool.definition
    return ToolSpec(
        name=definition.name,
        description=definition.description,
        parameters=definition.parameters or dict(EMPTY_OBJECT_SCHEMA),
    )


class ToolService:
    """Tools of every tenant (each call names the caller's tenant), plus the
    builtin tools every tenant sees.

    `egress_allow_hosts` turns the `http_request` builtin on for those hosts
    (a comma-separated string or a collection); `secrets` reads the header
    values of HTTP tools (default: environment variables and files in
    `.aster/secrets`)."""

    def __init__(
        self,
        repository: ToolRepository,
        *,
        egress_allow_hosts: str | Collection[str] = (),
        secrets: SecretResolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if isinstance(egress_allow_hosts, str):
            egress_allow_hosts = parse_allow_hosts(egress_allow_hosts)
        self._repository = repository
        self._builtins: dict[str, BuiltinTool] = builtin_tools(
            HttpRequestTool(egress_allow_hosts, transport=transport)
        )
        self._http = HttpToolExecutor(
            secrets or EnvOrFileSecrets(DEFAULT_SECRETS_DIR), transport=transport
        )
        self._recent: OrderedDict[tuple[str, str, str], _Remembered] = OrderedDict()

    def register_builtin(self, tool: BuiltinTool) -> None:
        """Adds a builtin tool (at wiring time), visible in every tenant."""
        if tool.id in self._builtins:
            raise ValueError(f"builtin tool {tool.id!r} is already registered")
        self._builtins[tool.id] = tool

    # The registry -------------------------------------------------------------

    async def create(self, tenant: str, definition: ToolDefinition, proposed_id: str = "") -> Tool:
        """Validates and stores a new HTTP tool."""
        tool_id = check_id(proposed_id, "tool_id") if proposed_id else new_id(ID_PREFIX)
        definition = normalized(definition)
        validate_tool_definition(definition)
        if tool_id in self._builtins:
            raise AlreadyExists(
                f"tool {tool_id!r} already exists: it is a builtin tool", field="tool_id"
            )
        now = utcnow()
        tool = Tool(id=tool_id, definition=definition, create_time=now, update_time=now)
        return await self._repository.create(tenant, tool)

    async def get(self, tenant: str, tool_id: str) -> Tool:
        """One tool (builtin or the tenant's), or NOT_FOUND."""
        check_id(tool_id, "id")
        builtin = self._builtins.get(tool_id)
        if builtin is not None:
            return builtin.as_tool()
        return await self._repository.get(tenant, tool_id)

    async def list(self, tenant: str, size: int, token: str, filter_text: str) -> ToolPage:
        """One page of tools matching `filter_text`, oldest first: the
        builtin tools (created at the epoch) come before the tenant's."""
        limit = page_size(size)
        where = parse_tool_filter(filter_text)
        query = f"filter={filter_text.strip()}"
        after = decode_token(token, query)
        position = _position(after)
        builtins = [
            tool
            for tool in (b.as_tool() for b in self._builtins.values())
            if where.matches(tool) and (tool.create_time, tool.id) > position
        ]
        tools = builtins[:limit]
        more = len(builtins) > limit
        if not more:
            stored, more = await self._repository.list(tenant, where, after, limit - len(tools))
            # A stored tool whose id a newer server made a builtin is hidden.
            tools += [t for t in stored if t.id not in self._builtins]
        next_token = ""
        if more and tools:
            last = tools[-1]
            next_token = encode_token(Cursor(last.create_time.isoformat(), last.id), query)
        return ToolPage(tools, next_token)

    async def update(
        self, tenant: str, tool_id: str, patch: ToolDefinition, paths: Sequence[str], etag: str
    ) -> Tool:
        """Applies the masked fields of `patch`; ABORTED if `etag` is stale,
        FAILED_PRECONDITION for a builtin tool."""
        current = await self.get(tenant, tool_id)
        self._refuse_builtin(current.id, "changed")
        check_etag(etag, current.id, current.revision)
        definition = apply_update_mask(current.definition, patch, paths, UPDATABLE_PATHS)
        definition = normalized(definition)
        validate_tool_definition(definition)
        updated = dataclasses.replace(current, definition=definition, update_time=utcnow())
        return await self._repository.replace(tenant, updated, current.revision)

    async def delete(self, tenant: str, tool_id: str, etag: str) -> None:
        """Deletes the tool; ABORTED if `etag` is set and stale,
        FAILED_PRECONDITION for a builtin tool."""
        check_id(tool_id, "id")
        self._refuse_builtin(tool_id, "deleted")
        expected = None
        if etag:
            current = await self._repository.get(tenant, tool_id)
            check_etag(etag, current.id, current.revision)
            expected = current.revision
        await self._repository.delete(tenant, tool_id, expected)

    async def count(self, tenant: str) -> int:
        """How many tools the tenant has registered (builtins not counted)."""
        return await self._repository.count(tenant)

    def _refuse_builtin(self, tool_id: str, verb: str) -> None:
        if tool_id in self._builtins:
            raise FailedPrecondition(
                f"tool {tool_id!r} is a builtin tool and cannot be {verb}",
                resource="tool",
                id=tool_id,
            )

    # For the run loop ---------------------------------------------------------

    async def lookup(self, tenant: str, tool_ids: Sequence[str]) -> _Tools:
        """The tools `tool_ids` name, in that order, each once. INVALID_ARGUMENT
        (field `tools`) names an unknown id, or two tools with one name (the
        model could not tell them apart)."""
        wanted = list(dict.fromkeys(tool_ids))
        stored = await self._repository.get_many(
            tenant, [i for i in wanted if i not in self._builtins]
        )
        tools: _Tools = []
        by_name: dict[str, str] = {}
        for tool_id in wanted:
            builtin = self._builtins.get(tool_id)
            tool = builtin.as_tool() if builtin is not None else stored.get(tool_id)
            if tool is None:
                raise InvalidArgument(f"unknown tool {tool_id[:80]!r}", field="tools", id=tool_id)
            name = tool.definition.name
            if name in by_name:
                raise InvalidArgument(
                    f"tools {by_name[name]!r} and {tool_id!r} have the same name {name!r}",
                    field="tools",
                )
            by_name[name] = tool_id
            tools.append(tool)
        return tools

    async def specs(self, tenant: str, tool_ids: Sequence[str]) -> _Specs:
        """What the model is told about the tools `tool_ids` name (see
        `lookup`, whose order and errors it shares). The model calls a tool
        by its name; `lookup` maps names back to ids."""
        return [tool_spec(tool) for tool in await self.lookup(tenant, tool_ids)]

    async def callable_tools(
        self, tenant: str, tool_ids: Sequence[str]
    ) -> tuple[Sequence[ToolSpec], dict[str, str]]:
        """The specs the model sees for `tool_ids`, and the tool id behind
        each name the model calls them by."""
        tools = await self.lookup(tenant, tool_ids)
        return [tool_spec(t) for t in tools], {t.definition.name: t.id for t in tools}

    async def execute(
        self,
        tenant: str,
        tool_id: str,
        arguments: Mapping[str, Any],
        idempotency_key: str = "",
    ) -> ToolOutcome:
        """Calls the tool once. Arguments that break its parameters schema,
        failures and timeouts are outcomes with an `error`, never
        exceptions; only an unknown (NOT_FOUND) or malformed tool id or a
        malformed idempotency key raise.

        With an `idempotency_key`, a successful outcome is remembered (by
        this process) and returned again for the same tenant, tool and key
        without calling the tool; a failed one is not, so a retry calls the
        tool again. HTTP tools get the key as an `Idempotency-Key` header."""
        tool = await self._executable(tenant, tool_id)
        _check_idempotency_key(idempotency_key)
        if not idempotency_key:
            return await self._run(tool, arguments, "")
        key = (tenant, tool.id, idempotency_key)
        fingerprint = _fingerprint(arguments)
        remembered = self._recent.get(key)
        if remembered is not None:
            if remembered.fingerprint != fingerprint:
                return ToolOutcome(
                    None,
                    f"idempotency_key {idempotency_key!r} was used for this tool with other "
                    "arguments",
                    0.0,
                )
            self._recent.move_to_end(key)
            return await asyncio.shield(remembered.task)
        task = asyncio.ensure_future(self._run(tool, arguments, idempotency_key))
        entry = _Remembered(fingerprint, task)
        self._recent[key] = entry
        while len(self._recent) > IDEMPOTENCY_MEMORY:
            self._recent.popitem(last=False)
        task.add_done_callback(lambda done: self._forget_failure(key, entry, done))
        return await asyncio.shield(task)

    def _forget_failure(
        self, key: tuple[str, str, str], entry: _Remembered, task: asyncio.Task[ToolOutcome]
    ) -> None:
        failed = task.cancelled() or task.exception() is not None or not task.result().ok
        if failed and self._recent.get(key) is entry:
            del self._recent[key]

    async def _executable(self, tenant: str, tool_id: str) -> Tool:
        check_id(tool_id, "tool_id")
        builtin = self._builtins.get(tool_id)
        if builtin is not None:
            return builtin.as_tool()
        tools = await self._repository.get_many(tenant, [tool_id])
        if tool_id not in tools:
            raise not_found(tool_id)
        return tools[tool_id]

    async def _run(
        self, tool: Tool, arguments: Mapping[str, Any], idempotency_key: str
    ) -> ToolOutcome:
        started = time.perf_counter()
        output: Any = None
        error = argument_error(tool.definition.parameters, dict(arguments))
        if not error:
            try:
                builtin = self._builtins.get(tool.id) if tool.builtin else None
                if builtin is not None:
                    output = await builtin.run(arguments, idempotency_key)
                else:
                    output = await self._http.call(tool.definition.http, arguments, idempotency_key)
            except ToolError as err:
                error = str(err) or "the tool failed"
            except Exception as err:
                _log.warning("tool raised", tool_id=tool.id, error_type=type(err).__name__)
                error = f"the tool failed unexpectedly ({type(err).__name__})"
        duration = time.perf_counter() - started
        if error:
            _log.info("tool failed", tool_id=tool.id, duration_ms=round(duration * 1000, 1))
            return ToolOutcome(None, error, duration)
        return ToolOutcome(output, "", duration)


def _position(after: Cursor | None) -> tuple[datetime, str]:
    if after is None:
        return (datetime.min.replace(tzinfo=UTC), "")
    try:
        return (as_utc(datetime.fromisoformat(after.sort_key)), after.last_id)
    except ValueError:
        raise InvalidArgument("page_token is malformed", field="page_token") from None


def _check_idempotency_key(key: str) -> None:
    if len(key) > MAX_IDEMPOTENCY_KEY or not all(" " <= c <= "~" for c in key):
        raise InvalidArgument(
            f"idempotency_key must be at most {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            field="idempotency_key",
        )


def _fingerprint(arguments: Mapping[str, Any]) -> str:
    text = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
