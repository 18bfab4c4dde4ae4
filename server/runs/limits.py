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


@dataclass(frozen=True)
class LeaseSettings:
    """How this worker leases runs from the shared queue."""

    lease_s: float = 10.0
    poll_s: float = 0.5
    # Runs one worker executes at once; more stay queued for other workers.
    max_runs: int = 1000
    # Attempts before a run that keeps losing its worker is given up (0: none).
    max_attempts: int = 3
