"""The server-side limits of a run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunLimits:
    """Caps every run gets, from the settings."""

    max_steps: int = 8
    max_tokens: int = 100_000
    timeout_s: float = 600.0
    max_input_chars: int = 100_000
