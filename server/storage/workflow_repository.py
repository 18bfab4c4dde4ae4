"""The only code that reads and writes workflow definitions and schedules
in SQL."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from aster.server.clock import as_utc
from aster.server.errors import AlreadyExists, EtagMismatch, NotFound
from aster.server.pagination import Cursor
from aster.server.storage.database import Database
from aster.server.storage.workflow_tables import (
    WorkflowRow,
    WorkflowScheduleRow,
    WorkflowVersionRow,
)
from aster.server.workflows.codec import (
    schedule_from_json,
    schedule_to_json,
    spec_from_json,
    spec_to_json,
)
from aster.server.workflows.models import DueSchedule, Workflow, WorkflowFilter


class WorkflowRepository:
    """Workflows of one database, always scoped by tenant (except for the
    scheduler's view of every schedule)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, tenant: str, workflow: Workflow) -> Workflow:
        """Inserts `workflow` as its first version; ALREADY_EXISTS if the id
        is taken. A deleted workflow's id may be taken again: the versions
        go on from the deleted one's last (so old versions stay readable)."""
        try:
            async with self._db.session() as session:
                row = await session.get(WorkflowRow, (tenant, workflow.id), with_for_update=True)
                if row is not None and row.delete_time is None:
                    raise _already_exists(workflow.id)
                if row is not None:
                    workflow.version = row.version + 1
                    await session.delete(row)
                    await session.flush()
                session.add(_workflow_row(tenant, workflow))
                session.add(_version_row(tenant, workflow))
                await _sync_schedules(session, tenant, workflow)
        except IntegrityError:
            raise _already_exists(workflow.id) from None
        return workflow

    async def get(self, tenant: str, workflow_id: str) -> Workflow:
        """The workflow at its current version, or NOT_FOUND (also when deleted)."""
        async with self._db.session() as session:
            row = await session.get(WorkflowRow, (tenant, workflow_id))
            if row is None or row.delete_time is not None:
                raise _not_found(workflow_id)
            return _to_workflow(row.id, row.version, row.spec, row.create_time, row.update_time)

    async def get_version(self, tenant: str, workflow_id: str, version: int) -> Workflow:
        """One version, even of a deleted workflow; NOT_FOUND if it never existed."""
        async with self._db.session() as session:
            row = await session.get(WorkflowVersionRow, (tenant, workflow_id, version))
            if row is None:
                raise NotFound(
                    f"workflow {workflow_id!r} has no version {version}",
                    resource="workflow",
                    id=workflow_id,
                )
            return _to_workflow(
                row.workflow_id, row.version, row.spec, row.create_time, row.update_time
            )

    async def list_page(
        self, tenant: str, where: WorkflowFilter, after: Cursor | None, limit: int
    ) -> tuple[list[Workflow], bool]:
        """Up to `limit` live workflows after `after`, oldest first, and
        whether more follow."""
        query = select(WorkflowRow).where(
            WorkflowRow.tenant == tenant, WorkflowRow.delete_time.is_(None), *_conditions(where)
        )
        if after is not None:
            created = after.time()
            query = query.where(
                or_(
                    WorkflowRow.create_time > created,
                    and_(WorkflowRow.create_time == created, WorkflowRow.id > after.last_id),
                )
            )
        query = query.order_by(WorkflowRow.create_time, WorkflowRow.id).limit(limit + 1)
        async with self._db.session() as session:
            rows = (await session.scalars(query)).all()
        items = [
            _to_workflow(r.id, r.version, r.spec, r.create_time, r.update_time)
            for r in rows[:limit]
        ]
        return items, len(rows) > limit

    async def add_version(self, tenant: str, workflow: Workflow) -> Workflow:
        """Stores `workflow` as its new current version if the current one is
        still `workflow.version - 1`; ABORTED otherwise (someone else made a
        version meanwhile), NOT_FOUND if it is gone."""
        expected = workflow.version - 1
        spec = spec_to_json(workflow.spec)
        statement = (
            update(WorkflowRow)
            .where(
                WorkflowRow.tenant == tenant,
                WorkflowRow.id == workflow.id,
                WorkflowRow.version == expected,
                WorkflowRow.delete_time.is_(None),
            )
            .values(
                version=workflow.version,
                spec=spec,
                labels=dict(workflow.spec.labels),
                update_time=workflow.update_time,
            )
        )
        async with self._db.session() as session:
            result = await session.execute(statement)
            if result.rowcount == 0:  # type: ignore[attr-defined]
                await self._missing_or_changed(session, tenant, workflow.id)
            session.add(_version_row(tenant, workflow))
            await _sync_schedules(session, tenant, workflow)
        return workflow

    async def delete(
        self, tenant: str, workflow_id: str, expected_version: int | None, now: datetime
    ) -> None:
        """Marks the workflow deleted (its versions stay, for the executions
        pinned to them) and drops its schedules; with `expected_version`,
        only if that is still the current version."""
        statement = (
            update(WorkflowRow)
            .where(
                WorkflowRow.tenant == tenant,
                WorkflowRow.id == workflow_id,
                WorkflowRow.delete_time.is_(None),
            )
            .values(delete_time=now)
        )
        if expected_version is not None:
            statement = statement.where(WorkflowRow.version == expected_version)
        async with self._db.session() as session:
            result = await session.execute(statement)
            if result.rowcount == 0:  # type: ignore[attr-defined]
                await self._missing_or_changed(session, tenant, workflow_id)
            await session.execute(
                delete(WorkflowScheduleRow).where(
                    WorkflowScheduleRow.tenant == tenant,
                    WorkflowScheduleRow.workflow_id == workflow_id,
                )
            )

    async def _missing_or_changed(
        self, session: AsyncSession, tenant: str, workflow_id: str
    ) -> None:
        row = await session.get(WorkflowRow, (tenant, workflow_id))
        if row is None or row.delete_time is not None:
            raise _not_found(workflow_id)
        raise EtagMismatch(
            f"workflow {workflow_id!r} was changed concurrently; get it again and retry",
            field="etag",
        )

    async def count(self, tenant: str) -> int:
        """How many live workflows the tenant has."""
        async with self._db.session() as session:
            total = await session.scalar(
                select(func.count())
                .select_from(WorkflowRow)
                .where(WorkflowRow.tenant == tenant, WorkflowRow.delete_time.is_(None))
            )
        return int(total or 0)

    # For the scheduler ------------------------------------------------------

    async def schedules(self) -> list[DueSchedule]:
        """Every schedule of every tenant's live workflows."""
        async with self._db.session() as session:
            rows = (await session.scalars(select(WorkflowScheduleRow))).all()
        return [
            DueSchedule(
                tenant=r.tenant,
                workflow_id=r.workflow_id,
                schedule=schedule_from_json(r.schedule),
                create_time=as_utc(r.create_time),
                last_fire_time=None if r.last_fire_time is None else as_utc(r.last_fire_time),
            )
            for r in rows
        ]

    async def advance_schedule(self, due: DueSchedule, fire_time: datetime) -> bool:
        """Records `fire_time` as the schedule's latest handled firing unless
        a later one is recorded already (replicas race here; the time only
        moves forward); whether this call moved it."""
        statement = (
            update(WorkflowScheduleRow)
            .where(
                WorkflowScheduleRow.tenant == due.tenant,
                WorkflowScheduleRow.workflow_id == due.workflow_id,
                WorkflowScheduleRow.schedule_id == due.schedule.id,
                or_(
                    WorkflowScheduleRow.last_fire_time.is_(None),
                    WorkflowScheduleRow.last_fire_time < fire_time,
                ),
            )
            .values(last_fire_time=fire_time)
        )
        async with self._db.session() as session:
            result = await session.execute(statement)
            return bool(result.rowcount)  # type: ignore[attr-defined]


async def _sync_schedules(session: AsyncSession, tenant: str, workflow: Workflow) -> None:
    """Makes the schedule rows those of `workflow`: new ids start now,
    kept ids keep where their firings stand, dropped ids go."""
    existing = {
        row.schedule_id: row
        for row in (
            await session.scalars(
                select(WorkflowScheduleRow).where(
                    WorkflowScheduleRow.tenant == tenant,
                    WorkflowScheduleRow.workflow_id == workflow.id,
                )
            )
        ).all()
    }
    wanted = {s.id: s for s in workflow.spec.schedules}
    for schedule_id, old in existing.items():
        if schedule_id not in wanted:
            await session.delete(old)
    for schedule_id, schedule in wanted.items():
        row = existing.get(schedule_id)
        if row is None:
            session.add(
                WorkflowScheduleRow(
                    tenant=tenant,
                    workflow_id=workflow.id,
                    schedule_id=schedule_id,
                    schedule=schedule_to_json(schedule),
                    create_time=workflow.update_time,
                    last_fire_time=None,
                )
            )
        else:
            row.schedule = schedule_to_json(schedule)


def _already_exists(workflow_id: str) -> AlreadyExists:
    return AlreadyExists(f"workflow {workflow_id!r} already exists", field="workflow_id")


def _not_found(workflow_id: str) -> NotFound:
    return NotFound(f"workflow {workflow_id!r} not found", resource="workflow", id=workflow_id)


def _conditions(where: WorkflowFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    for key, value in where.labels_equal:
        conditions.append(WorkflowRow.labels[key].as_string() == value)
    for key in where.labels_present:
        conditions.append(WorkflowRow.labels[key].as_string().is_not(None))
    return conditions


def _workflow_row(tenant: str, workflow: Workflow) -> WorkflowRow:
    return WorkflowRow(
        tenant=tenant,
        id=workflow.id,
        version=workflow.version,
        spec=spec_to_json(workflow.spec),
        labels=dict(workflow.spec.labels),
        create_time=workflow.create_time,
        update_time=workflow.update_time,
        delete_time=None,
    )


def _version_row(tenant: str, workflow: Workflow) -> WorkflowVersionRow:
    return WorkflowVersionRow(
        tenant=tenant,
        workflow_id=workflow.id,
        version=workflow.version,
        spec=spec_to_json(workflow.spec),
        create_time=workflow.create_time,
        update_time=workflow.update_time,
    )


def _to_workflow(
    workflow_id: str, version: int, spec: dict[str, object], created: datetime, updated: datetime
) -> Workflow:
    return Workflow(
        id=workflow_id,
        spec=spec_from_json(dict(spec)),
        version=version,
        create_time=as_utc(created),
        update_time=as_utc(updated),
    )
