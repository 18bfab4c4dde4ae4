"""Row locks taken in one order, so that transactions locking several rows
of a table cannot deadlock with each other."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute


async def lock_in_id_order(
    db: AsyncSession, id_column: InstrumentedAttribute[str], *conditions: ColumnElement[Any]
) -> list[str]:
    """Locks the rows matching `conditions` in the order of their ids
    (`SELECT ... ORDER BY id FOR UPDATE`; SQLite, which has one writer at a
    time, ignores the lock) and returns their ids. A multi-row UPDATE locks
    rows in whatever order it scans them, which deadlocks against another
    transaction locking two of the same rows the other way round."""
    rows = await db.scalars(
        select(id_column).where(*conditions).order_by(id_column).with_for_update()
    )
    return list(rows.all())
