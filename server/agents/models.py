"""Domain types of the agents area."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from aster.server.etags import etag_for

PROVIDERS = ("scripted", "openai", "anthropic")


class AgentState(StrEnum):
    """Whether an agent takes new runs."""

    ACTIVE = "ACTIVE"
    DISABLED = "DISABLED"


@dataclass
class SecretRef:
    """Where the server finds a secret: an environment variable or a file name."""

    env: str = ""
    file: str = ""


@dataclass
class ModelConfig:
    """Which model an agent uses and how it is called."""

    provider: str = "scripted"
    model: str = ""
    temperature: float | None = None
    max_output_tokens: int | None = None
    api_key: SecretRef | None = None
    base_url: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MemoryConfig:
    """How an agent uses semantic memory: auto-recall puts the `recall_top_k`
    memories closest to the run's input in its context."""

    auto_recall: bool = False
    recall_top_k: int = 0
    recall_min_score: float | None = None


@dataclass
class AgentSpec:
    """The fields of an agent a caller sets."""

    display_name: str = ""
    description: str = ""
    instructions: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    tools: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    state: AgentState = AgentState.ACTIVE
    memory: MemoryConfig = field(default_factory=MemoryConfig)


@dataclass
class Agent:
    """A stored agent: its spec plus the fields the server owns."""

    id: str
    spec: AgentSpec
    create_time: datetime
    update_time: datetime
    revision: int = 1

    @property
    def etag(self) -> str:
        """The etag of this revision."""
        return etag_for(self.id, self.revision)


@dataclass(frozen=True)
class AgentFilter:
    """A parsed ListAgents filter: every condition must hold."""

    state: AgentState | None = None
    labels_equal: tuple[tuple[str, str], ...] = ()
    labels_present: tuple[str, ...] = ()
