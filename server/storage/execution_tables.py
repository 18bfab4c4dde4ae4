"""Tables of workflow executions and the attempts of their steps."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from aster.server.storage.tables import Base


class ExecutionRow(Base):
    """One execution of one pinned version of a workflow."""

    __tablename__ = "workflow_executions"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    workflow_id: Mapped[str] = mapped_column(String(63))
    workflow_version: Mapped[int] = mapped_column(Integer)
    # The steps of the pinned version, as started (a frozen snapshot).
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(24))
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    # What the latest ResumeExecution handed over (templates see `resume`).
    resume_input: Mapped[dict[str, Any]] = mapped_column(JSON)
    output: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    # "" when none was given; unique per tenant and workflow otherwise.
    idempotency_key: Mapped[str] = mapped_column(String(200), default="")
    # Lease: which worker drives the execution, until when, and the how
    # many-th time it was taken (fencing: writes of older takes are refused).
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # How many times the execution was taken back from a worker that died
    # (its lease lapsed); past the cap it is given up (FAILED).
    rescues: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str] = mapped_column(String(63), default="")
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (
        Index("ix_workflow_executions_list", "tenant", "workflow_id", "create_time", "id"),
        Index("ix_workflow_executions_state", "state", "lease_expires"),
        Index(
            "ux_workflow_executions_idempotency",
            "tenant",
            "workflow_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key <> ''"),
            sqlite_where=text("idempotency_key <> ''"),
        ),
    )


class StepAttemptRow(Base):
    """One attempt of one step of an execution. `key` places the step in the
    execution (its name, inside loop iterations: `loop[2]/name`)."""

    __tablename__ = "workflow_step_attempts"

    execution_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(63))
    step_name: Mapped[str] = mapped_column(String(63))
    # The step's kind (agent, tool, parallel, condition, loop, approval, wait).
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    input: Mapped[Any] = mapped_column(JSON, nullable=True)
    output: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    run_id: Mapped[str] = mapped_column(String(63), default="")
    # A wait step's (or a retry's) wake-up time: durable across restarts.
    wake_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # Order of starts within the execution (history order).
    position: Mapped[int] = mapped_column(Integer)
    start_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
