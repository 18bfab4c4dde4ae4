"""Aster's own Prometheus metrics, beside the standard grpc_server_* ones."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

AUTH_FAILURES = Counter(
    "aster_auth_failures_total", "Calls refused by authentication or scope checks.", ["reason"]
)
RATE_LIMITED = Counter("aster_rate_limited_total", "Calls refused by the rate limiter.", ["bucket"])
RUNS = Counter("aster_runs_total", "Runs that ended, by status.", ["status"])
ACTIVE_STREAMS = Gauge(
    "aster_active_streams",
    "Run streams (Chat, StreamRun) being served.",
    multiprocess_mode="livesum",
)
TOKENS = Counter("aster_tokens_total", "Model tokens used by runs.", ["direction"])
TIME_TO_FIRST_TOKEN = Histogram(
    "aster_time_to_first_token_seconds",
    "Time from a run's start to its first streamed token.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TOOL_CALLS = Counter("aster_tool_calls_total", "Tool calls made by runs.", ["outcome"])
