"""Tables of workflow definitions: the current version of each workflow,
every version ever made, and the schedules with where their firings stand."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from aster.server.storage.tables import Base


class WorkflowRow(Base):
    """A workflow at its current version. A deleted workflow keeps its row
    (with `delete_time` set) so its versions stay readable for the
    executions pinned to them, and so a re-created id goes on numbering."""

    __tablename__ = "workflows"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    # The current version's definition (the same JSON as its version row).
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    labels: Mapped[dict[str, str]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delete_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (Index("ix_workflows_tenant_create_time", "tenant", "create_time", "id"),)


class WorkflowVersionRow(Base):
    """One version of a workflow, never changed once written."""

    __tablename__ = "workflow_versions"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # When the workflow was first created (the same on every version).
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # When this version was made.
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WorkflowScheduleRow(Base):
    """A schedule of a workflow's current version (deleted with the
    workflow or when an update drops it), and the latest firing handled."""

    __tablename__ = "workflow_schedules"

    tenant: Mapped[str] = mapped_column(String(63), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    schedule_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    schedule: Mapped[dict[str, Any]] = mapped_column(JSON)
    # When the schedule (this id) first appeared: no firing before it counts.
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_fire_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
