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

# The work queues, as the database holds them: every replica (and every
# worker process) reads the same database-wide numbers every
# QUEUE_REFRESH_S, so dashboards and alerts take max(), never sum(). With
# several worker processes, the value of the one that read last is exported.
QUEUE_REFRESH_S = 5.0
RUN_QUEUE_DEPTH = Gauge(
    "aster_run_queue_depth",
    "Runs QUEUED (not started yet, in the whole database), including runs "
    "waiting for an earlier run of their session (ENQUEUE).",
    multiprocess_mode="livemostrecent",
)
RUN_QUEUE_OLDEST_AGE = Gauge(
    "aster_run_queue_oldest_age_seconds",
    "Age of the oldest QUEUED run that could start now (not waiting for an "
    "earlier run of its session); 0 when there is none.",
    multiprocess_mode="livemostrecent",
)
RUNS_LEASE_EXPIRED = Gauge(
    "aster_runs_lease_expired",
    "RUNNING runs whose lease expired (their worker stopped renewing it) and "
    "that no replica has rescued yet.",
    multiprocess_mode="livemostrecent",
)
EXECUTION_QUEUE_DEPTH = Gauge(
    "aster_workflow_execution_queue_depth",
    "Workflow executions PENDING (waiting for a worker to take them), in the whole database.",
    multiprocess_mode="livemostrecent",
)
EXECUTIONS_LEASE_EXPIRED = Gauge(
    "aster_workflow_executions_lease_expired",
    "RUNNING workflow executions whose lease expired and that no replica has rescued yet.",
    multiprocess_mode="livemostrecent",
)
