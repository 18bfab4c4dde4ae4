"""Pool messages ⇄ pool domain types."""

from __future__ import annotations

from aster.server.pools.models import PoolAgentState, PoolAgentView, PoolStats
from aster.server.rpc.convert import timestamp
from aster.v1 import pool_pb2

_STATE_TO_PROTO = {
    PoolAgentState.WARMING: pool_pb2.POOL_AGENT_STATE_WARMING,
    PoolAgentState.LIVE: pool_pb2.POOL_AGENT_STATE_LIVE,
    PoolAgentState.HIBERNATED: pool_pb2.POOL_AGENT_STATE_HIBERNATED,
    PoolAgentState.DRAINING: pool_pb2.POOL_AGENT_STATE_DRAINING,
}


def pool_agent_to_proto(view: PoolAgentView) -> pool_pb2.PoolAgent:
    """The message of one pooled agent."""
    message = pool_pb2.PoolAgent(
        agent_id=view.agent_id,
        state=_STATE_TO_PROTO[view.state],
        active_runs=view.active_runs,
        create_time=timestamp(view.create_time),
    )
    if view.last_use_time is not None:
        message.last_use_time.CopyFrom(timestamp(view.last_use_time))
    return message


def stats_to_proto(stats: PoolStats) -> pool_pb2.PoolStats:
    """The message of the pool's figures."""
    return pool_pb2.PoolStats(
        capacity=stats.capacity,
        live=stats.live,
        hibernated=stats.hibernated,
        hits=stats.hits,
        cold_starts=stats.cold_starts,
        evictions=stats.evictions,
        resume_latency_p50_ms=stats.resume_latency_p50_ms,
        resume_latency_p99_ms=stats.resume_latency_p99_ms,
        admission_timeouts=stats.admission_timeouts,
    )
