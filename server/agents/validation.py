"""The rules a stored agent must satisfy; errors name the offending field."""

from __future__ import annotations

import math
import re

from aster.server.agents.models import PROVIDERS, AgentSpec
from aster.server.display_text import check_description, check_display_name
from aster.server.errors import InvalidArgument
from aster.server.labels import validate_labels

MAX_INSTRUCTIONS = 100_000
MAX_TOOLS = 128
MAX_RECALL_TOP_K = 20
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_TOOL_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def _fail(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", field=field)


def validate_agent_spec(spec: AgentSpec, prefix: str = "agent") -> None:
    """Raises InvalidArgument for the first field of `spec` that breaks a rule."""
    check_display_name(spec.display_name, f"{prefix}.display_name")
    check_description(spec.description, f"{prefix}.description")
    if len(spec.instructions) > MAX_INSTRUCTIONS:
        raise _fail(f"{prefix}.instructions", f"must be at most {MAX_INSTRUCTIONS} characters")
    model = spec.model
    if model.provider not in PROVIDERS:
        raise _fail(
            f"{prefix}.model.provider",
            f"unknown provider {model.provider!r}; use one of {', '.join(PROVIDERS)}",
        )
    if model.temperature is not None and not (
        math.isfinite(model.temperature) and 0 <= model.temperature <= 2
    ):
        raise _fail(f"{prefix}.model.temperature", "must be between 0 and 2")
    if model.max_output_tokens is not None and model.max_output_tokens <= 0:
        raise _fail(f"{prefix}.model.max_output_tokens", "must be positive")
    if model.api_key is not None:
        if model.api_key.env and not _ENV_NAME.match(model.api_key.env):
            raise _fail(f"{prefix}.model.api_key.env", "is not an environment variable name")
        if model.api_key.file and not _FILE_NAME.match(model.api_key.file):
            raise _fail(
                f"{prefix}.model.api_key.file",
                "must be a plain file name in the secrets directory",
            )
    if model.base_url and not model.base_url.startswith(("http://", "https://")):
        raise _fail(f"{prefix}.model.base_url", "must be an http:// or https:// URL")
    if len(spec.tools) > MAX_TOOLS:
        raise _fail(f"{prefix}.tools", f"at most {MAX_TOOLS} tools")
    for index, tool in enumerate(spec.tools):
        if not _TOOL_ID.match(tool):
            raise _fail(f"{prefix}.tools[{index}]", f"{tool[:80]!r} is not a tool id")
    validate_labels(spec.labels, f"{prefix}.labels")
    if not 0 <= spec.memory.recall_top_k <= MAX_RECALL_TOP_K:
        raise _fail(f"{prefix}.memory.recall_top_k", f"must be between 0 and {MAX_RECALL_TOP_K}")
    score = spec.memory.recall_min_score
    if score is not None and not math.isfinite(score):
        raise _fail(f"{prefix}.memory.recall_min_score", "must be a finite number")
