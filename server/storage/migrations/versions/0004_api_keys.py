"""Create the api_keys table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Creates `api_keys`."""
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("tenant", sa.String(63), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("create_time", TZ, nullable=False),
        sa.Column("expire_time", TZ, nullable=True),
        sa.Column("revoke_time", TZ, nullable=True),
        sa.Column("last_use_time", TZ, nullable=True),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant", "create_time"])


def downgrade() -> None:
    """Drops `api_keys`."""
    op.drop_table("api_keys")
