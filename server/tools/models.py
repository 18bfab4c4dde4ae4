"""Domain types of the tools area."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from aster.server.agents.models import SecretRef
from aster.server.etags import etag_for

__all__ = [
    "HttpToolConfig",
    "SecretRef",
    "Tool",
    "ToolDefinition",
    "ToolError",
    "ToolFilter",
    "ToolKind",
    "ToolOutcome",
]


class ToolKind(StrEnum):
    """How a tool is implemented."""

    UNSPECIFIED = "UNSPECIFIED"
    BUILTIN = "BUILTIN"
    HTTP = "HTTP"


@dataclass
class HttpToolConfig:
    """How Aster calls an HTTP tool. Empty or unset values use the defaults of
    `aster.server.tools.validation` (POST, 10 s, 1 MiB)."""

    url: str = ""
    method: str = ""
    # Header name -> where the server reads its value; values never leave the server.
    headers: dict[str, SecretRef] = field(default_factory=dict)
    timeout: timedelta | None = None
    max_response_bytes: int = 0


@dataclass
class ToolDefinition:
    """The fields of a tool a caller sets."""

    name: str = ""
    description: str = ""
    # A JSON Schema of the arguments object; empty means "no arguments".
    parameters: dict[str, Any] = field(default_factory=dict)
    kind: ToolKind = ToolKind.UNSPECIFIED
    # Meaningful for ToolKind.HTTP only.
    http: HttpToolConfig = field(default_factory=HttpToolConfig)
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Tool:
    """A tool: its definition plus the fields the server owns. Builtin tools
    are not stored; they have a fixed epoch create time and revision 1."""

    id: str
    definition: ToolDefinition
    create_time: datetime
    update_time: datetime
    revision: int = 1

    @property
    def etag(self) -> str:
        """The etag of this revision."""
        return etag_for(self.id, self.revision)

    @property
    def builtin(self) -> bool:
        """Whether the server provides this tool itself."""
        return self.definition.kind is ToolKind.BUILTIN


@dataclass(frozen=True)
class ToolFilter:
    """A parsed ListTools filter: every condition must hold."""

    kind: ToolKind | None = None
    labels_equal: tuple[tuple[str, str], ...] = ()
    labels_present: tuple[str, ...] = ()

    def matches(self, tool: Tool) -> bool:
        """Whether `tool` satisfies every condition (used for builtin tools,
        which are not in the database)."""
        labels = tool.definition.labels
        if self.kind is not None and tool.definition.kind is not self.kind:
            return False
        if any(labels.get(key) != value for key, value in self.labels_equal):
            return False
        return all(key in labels for key in self.labels_present)


@dataclass(frozen=True)
class ToolOutcome:
    """The result of one tool call: a JSON `output` on success, or an `error`
    message (and `output` None) on failure; `duration_s` either way."""

    output: Any
    error: str
    duration_s: float

    @property
    def ok(self) -> bool:
        """Whether the call succeeded."""
        return not self.error


class ToolError(Exception):
    """A tool call failed. The message is shown to the caller (and the
    model) as the call's `error`, so it must never contain a secret."""
