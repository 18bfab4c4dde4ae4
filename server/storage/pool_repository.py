"""The only code that reads and writes pooled agents in SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from aster.server.clock import as_utc
from aster.server.errors import AlreadyExists, NotFound
from aster.server.pagination import Cursor
from aster.server.pools.models import PoolAgentState, PoolMember
from aster.server.storage.database import Database
from aster.server.storage.pool_tables import PoolAgentRow
from aster.server.storage.run_tables import MessageRow, RunRow

_ACTIVE_RUNS = ("QUEUED", "RUNNING")
_LIVE = PoolAgentState.LIVE.value


class PoolRepository:
    """Pool membership and hibernated state, always scoped by tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, tenant: str, member: PoolMember) -> PoolMember:
        """Inserts `member`; ALREADY_EXISTS if the agent is in the pool."""
        row = PoolAgentRow(
            tenant=tenant,
            agent_id=member.agent_id,
            state=member.state.value,
            replica=member.replica,
            live_until=member.live_until,
            create_time=member.create_time,
            last_use_time=member.last_use_time,
            hibernate_time=member.hibernate_time,
            snapshot=member.snapshot,
        )
        try:
            async with self._db.session() as session:
                session.add(row)
        except IntegrityError:
            raise AlreadyExists(
                f"agent {member.agent_id!r} is already in the pool", field="agent_id"
            ) from None
        return member

    async def find(self, tenant: str, agent_id: str) -> PoolMember | None:
        """The pooled agent, or None if it is not in the pool."""
        async with self._db.session() as session:
            row = await session.get(PoolAgentRow, (tenant, agent_id))
            return _to_member(row) if row is not None else None

    async def get(self, tenant: str, agent_id: str) -> PoolMember:
        """The pooled agent, or NOT_FOUND."""
        member = await self.find(tenant, agent_id)
        if member is None:
            raise not_in_pool(agent_id)
        return member

    async def list_page(
        self,
        tenant: str,
        state: PoolAgentState | None,
        now: datetime,
        after: Cursor | None,
        limit: int,
    ) -> tuple[list[PoolMember], bool]:
        """Up to `limit` pooled agents after `after`, oldest first, and
        whether more follow; `state` compares the effective state."""
        query = select(PoolAgentRow).where(PoolAgentRow.tenant == tenant)
        if state is not None:
            query = query.where(_state_is(state, now))
        if after is not None:
            created = after.time()
            query = query.where(
                or_(
                    PoolAgentRow.create_time > created,
                    and_(
                        PoolAgentRow.create_time == created,
                        PoolAgentRow.agent_id > after.last_id,
                    ),
                )
            )
        query = query.order_by(PoolAgentRow.create_time, PoolAgentRow.agent_id).limit(limit + 1)
        async with self._db.session() as session:
            rows = (await session.scalars(query)).all()
        return [_to_member(r) for r in rows[:limit]], len(rows) > limit

    async def mark_live(
        self, tenant: str, agent_id: str, replica: str, live_until: datetime
    ) -> bool:
        """Records that `replica` holds the agent live (unless it is being
        removed); False if the agent left the pool or is draining."""
        statement = (
            update(PoolAgentRow)
            .where(
                PoolAgentRow.tenant == tenant,
                PoolAgentRow.agent_id == agent_id,
                PoolAgentRow.state != PoolAgentState.DRAINING.value,
            )
            .values(state=_LIVE, replica=replica, live_until=live_until)
        )
        async with self._db.session() as session:
            return bool((await session.execute(statement)).rowcount)  # type: ignore[attr-defined]

    async def record_uses(self, uses: Sequence[tuple[str, str, datetime]]) -> None:
        """Stores when each (tenant, agent id) was last used, in one
        transaction; a later time already stored is kept."""
        if not uses:
            return
        async with self._db.session() as session:
            for tenant, agent_id, used in uses:
                await session.execute(
                    update(PoolAgentRow)
                    .where(
                        PoolAgentRow.tenant == tenant,
                        PoolAgentRow.agent_id == agent_id,
                        or_(
                            PoolAgentRow.last_use_time.is_(None), PoolAgentRow.last_use_time < used
                        ),
                    )
                    .values(last_use_time=used)
                )

    async def hibernate(
        self,
        tenant: str,
        agent_id: str,
        replica: str,
        now: datetime,
        snapshot: dict[str, Any],
        *,
        last_use_time: datetime | None = None,
    ) -> bool:
        """Stores the agent's state and marks it HIBERNATED, if `replica`
        still holds it live; False otherwise (another replica warmed it, or
        it left the pool)."""
        statement = (
            update(PoolAgentRow)
            .where(
                PoolAgentRow.tenant == tenant,
                PoolAgentRow.agent_id == agent_id,
                PoolAgentRow.replica == replica,
                PoolAgentRow.state == _LIVE,
            )
            .values(
                state=PoolAgentState.HIBERNATED.value,
                replica="",
                live_until=None,
                hibernate_time=now,
                snapshot=snapshot,
                **({"last_use_time": last_use_time} if last_use_time is not None else {}),
            )
        )
        async with self._db.session() as session:
            return bool((await session.execute(statement)).rowcount)  # type: ignore[attr-defined]

    async def renew(self, replica: str, live_until: datetime) -> set[tuple[str, str]]:
        """Extends every hold of `replica`; returns the (tenant, agent id)
        pairs it still holds live."""
        mine = and_(PoolAgentRow.replica == replica, PoolAgentRow.state == _LIVE)
        async with self._db.session() as session:
            await session.execute(update(PoolAgentRow).where(mine).values(live_until=live_until))
            rows = (
                await session.execute(
                    select(PoolAgentRow.tenant, PoolAgentRow.agent_id).where(mine)
                )
            ).all()
        return {(r.tenant, r.agent_id) for r in rows}

    async def start_draining(self, tenant: str, agent_id: str) -> PoolMember:
        """Marks the agent DRAINING; NOT_FOUND if it is not in the pool."""
        async with self._db.session() as session:
            row = await session.get(PoolAgentRow, (tenant, agent_id))
            if row is None:
                raise not_in_pool(agent_id)
            row.state = PoolAgentState.DRAINING.value
            row.replica, row.live_until = "", None
            return _to_member(row)

    async def remove(self, tenant: str, agent_id: str) -> None:
        """Takes the agent out of the pool (no error if it is gone)."""
        async with self._db.session() as session:
            await session.execute(
                delete(PoolAgentRow).where(
                    PoolAgentRow.tenant == tenant, PoolAgentRow.agent_id == agent_id
                )
            )

    async def count_states(self, tenant: str, now: datetime) -> dict[PoolAgentState, int]:
        """How many of the tenant's pooled agents are in each effective state."""
        counts = dict.fromkeys(PoolAgentState, 0)
        async with self._db.session() as session:
            for state in PoolAgentState:
                counts[state] = int(
                    await session.scalar(
                        select(func.count()).where(
                            PoolAgentRow.tenant == tenant, _state_is(state, now)
                        )
                    )
                    or 0
                )
        return counts

    async def active_runs(self, tenant: str, agent_ids: Sequence[str]) -> dict[str, int]:
        """How many runs of each agent are QUEUED or RUNNING."""
        if not agent_ids:
            return {}
        query = (
            select(RunRow.agent_id, func.count())
            .where(
                RunRow.tenant == tenant,
                RunRow.agent_id.in_(list(agent_ids)),
                RunRow.status.in_(_ACTIVE_RUNS),
            )
            .group_by(RunRow.agent_id)
        )
        async with self._db.session() as session:
            rows = (await session.execute(query)).all()
        return {str(agent_id): int(count) for agent_id, count in rows}

    async def context_version(self, tenant: str, session_id: str) -> tuple[int, int]:
        """The session's active message count and last active position: a
        cached context with the same two figures is current."""
        query = select(func.count(), func.max(MessageRow.position)).where(
            MessageRow.tenant == tenant,
            MessageRow.session_id == session_id,
            MessageRow.active.is_(True),
        )
        async with self._db.session() as session:
            count, last = (await session.execute(query)).one()
        return int(count or 0), int(last or 0)


def not_in_pool(agent_id: str) -> NotFound:
    """The error for an agent that is not in the pool."""
    return NotFound(
        f"agent {agent_id!r} is not in the pool",
        field="agent_id",
        resource="pool_agent",
        id=agent_id,
    )


def _state_is(state: PoolAgentState, now: datetime) -> ColumnElement[bool]:
    live: ColumnElement[bool] = and_(PoolAgentRow.state == _LIVE, PoolAgentRow.live_until >= now)
    if state is PoolAgentState.LIVE:
        return live
    if state is PoolAgentState.HIBERNATED:
        hibernated: ColumnElement[bool] = or_(
            PoolAgentRow.state == PoolAgentState.HIBERNATED.value,
            and_(
                PoolAgentRow.state == _LIVE,
                or_(PoolAgentRow.live_until.is_(None), PoolAgentRow.live_until < now),
            ),
        )
        return hibernated
    same: ColumnElement[bool] = PoolAgentRow.state == state.value
    return same


def _to_member(row: PoolAgentRow) -> PoolMember:
    return PoolMember(
        agent_id=row.agent_id,
        state=PoolAgentState(row.state),
        create_time=as_utc(row.create_time),
        replica=row.replica,
        live_until=as_utc(row.live_until) if row.live_until is not None else None,
        last_use_time=as_utc(row.last_use_time) if row.last_use_time is not None else None,
        hibernate_time=as_utc(row.hibernate_time) if row.hibernate_time is not None else None,
        snapshot=dict(row.snapshot or {}),
    )
