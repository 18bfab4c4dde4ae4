"""Prometheus metrics of the pool."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LIVE_AGENTS = Gauge(
    "aster_pool_live_agents", "Pooled agents live in this process.", multiprocess_mode="livesum"
)
CAPACITY = Gauge(
    "aster_pool_capacity", "Most agents the pool keeps live.", multiprocess_mode="livesum"
)
HITS = Counter("aster_pool_hits_total", "Runs that found their pooled agent live.")
COLD_STARTS = Counter("aster_pool_cold_starts_total", "Runs that had to warm their pooled agent.")
HIBERNATIONS = Counter(
    "aster_pool_hibernations_total", "Live agents hibernated, by reason.", ["reason"]
)
EVICTIONS = Counter(
    "aster_pool_evictions_total", "Live agents hibernated to make room for another."
)
ADMISSION_TIMEOUTS = Counter(
    "aster_pool_admission_timeouts_total",
    "Runs refused (RESOURCE_EXHAUSTED) because every live agent stayed busy.",
)
RESUME_SECONDS = Histogram(
    "aster_pool_resume_seconds",
    "Time to warm a pooled agent (configuration, provider client, session context).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
