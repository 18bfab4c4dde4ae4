"""What the run loop needs from the tools and providers areas."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aster.server.agents.models import ModelConfig
from aster.server.providers.base import ModelProvider, ToolSpec


class ToolResult(Protocol):
    """The outcome of one tool call: a JSON value or an error."""

    @property
    def output(self) -> Any:
        """The tool's JSON output."""
        ...

    @property
    def error(self) -> str:
        """Why the tool failed; empty on success."""
        ...


class ToolRunner(Protocol):
    """Describes and executes tools for a tenant."""

    async def specs(self, tenant: str, tool_ids: Sequence[str]) -> list[ToolSpec]:
        """The specs of `tool_ids`; INVALID_ARGUMENT for an unknown id."""
        ...

    async def callable_tools(
        self, tenant: str, tool_ids: Sequence[str]
    ) -> tuple[Sequence[ToolSpec], dict[str, str]]:
        """The specs the model sees, and the tool id behind each tool name."""
        ...

    async def execute(
        self, tenant: str, tool_id: str, arguments: Mapping[str, Any], idempotency_key: str = ""
    ) -> ToolResult:
        """Runs one tool; failures are returned as the result's error."""
        ...


class ProviderSource(Protocol):
    """Hands out the provider for a model configuration."""

    def provider(self, config: ModelConfig) -> ModelProvider:
        """The provider of `config.provider`."""
        ...
