"""Semantic memories, their vectors and lineage.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _pgvector_available() -> bool:
    """Whether this PostgreSQL offers the pgvector extension."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    found = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).first()
    return found is not None


def upgrade() -> None:
    """Creates semantic_memories and semantic_memory_generations, adds the
    agents' `memory` settings, and, where pgvector exists, a vector column."""
    op.create_table(
        "semantic_memories",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("id", sa.String(63), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("agent_id", sa.String(63), nullable=False),
        sa.Column("session_id", sa.String(63), nullable=False),
        sa.Column("room_id", sa.String(63), nullable=False),
        sa.Column("source_run_id", sa.String(63), nullable=False),
        sa.Column("source_session_id", sa.String(63), nullable=False),
        sa.Column("source_message_id", sa.String(63), nullable=False),
        sa.Column("source_tool_call_id", sa.String(128), nullable=False),
        sa.Column("source_working_entry_id", sa.String(63), nullable=False),
        sa.Column("embedder", sa.String(128), nullable=False),
        sa.Column("embedder_version", sa.String(128), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("superseded_by", sa.String(63), nullable=False),
        sa.Column("consolidated_from", sa.JSON(), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
        sa.UniqueConstraint("tenant", "id", name="uq_semantic_memories_tenant_id"),
    )
    op.create_index(
        "ix_semantic_memories_embedder",
        "semantic_memories",
        ["tenant", "embedder", "embedder_version", "seq"],
    )
    op.create_index(
        "ix_semantic_memories_scope",
        "semantic_memories",
        ["tenant", "agent_id", "session_id", "room_id"],
    )
    op.create_index(
        "ix_semantic_memories_working",
        "semantic_memories",
        ["tenant", "source_working_entry_id"],
    )
    op.create_table(
        "semantic_memory_generations",
        sa.Column("tenant", sa.String(63), primary_key=True),
        sa.Column("embedder_key", sa.String(255), primary_key=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
    )
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("memory", sa.JSON(), nullable=True))
    if _pgvector_available():
        # Untested here (no pgvector on the development machines): a column of
        # unconstrained dimension, searched exactly by the `<=>` operator.
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
        op.execute("ALTER TABLE semantic_memories ADD COLUMN embedding_vector vector")


def downgrade() -> None:
    """Drops what upgrade created."""
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("memory")
    op.drop_table("semantic_memory_generations")
    op.drop_table("semantic_memories")
