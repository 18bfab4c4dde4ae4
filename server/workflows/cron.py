"""Cron expressions of workflow schedules: checking them, and the firing
times between two instants (croniter does the calendar arithmetic)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter  # type: ignore[import-untyped]

from aster.server.workflows.models import Schedule

MAX_CRON_LENGTH = 200


class CronError(ValueError):
    """A cron expression or time zone that cannot be used."""


def zone(name: str) -> tzinfo:
    """The time zone called `name` ("" is UTC); CronError if unknown."""
    if not name:
        return UTC
    if len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise CronError(f"{name[:80]!r} is not an IANA time zone")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"{name[:80]!r} is not an IANA time zone") from None


def check_cron(expression: str) -> None:
    """CronError unless `expression` has five fields, or six with seconds
    last, that croniter accepts."""
    fields = expression.split()
    if len(expression) > MAX_CRON_LENGTH or len(fields) not in (5, 6):
        raise CronError(
            f"{expression[:80]!r} is not a cron expression: use five fields (minute hour "
            "day-of-month month day-of-week), or six with seconds last"
        )
    if not croniter.is_valid(expression):
        raise CronError(f"{expression[:80]!r} is not a valid cron expression")


def firings(schedule: Schedule, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """The schedule's firing times `t` with `after < t <= until`, inside
    its start/end bounds (inclusive), oldest first, in UTC: the last `limit`
    of them when there are more (older ones are dropped)."""
    lower = after
    if schedule.start_time is not None and schedule.start_time > lower:
        # A firing exactly at start_time counts: start just before it.
        lower = schedule.start_time.replace(microsecond=0) - timedelta(seconds=1)
    upper = until
    if schedule.end_time is not None and schedule.end_time < upper:
        upper = schedule.end_time
    if lower >= upper:
        return []
    try:
        series = croniter(schedule.cron, lower.astimezone(zone(schedule.time_zone)))
        found: list[datetime] = []
        while True:
            moment: datetime = series.get_next(datetime).astimezone(UTC)
            if moment > upper:
                return found
            if moment > after and (schedule.start_time is None or moment >= schedule.start_time):
                found.append(moment)
                if len(found) > limit:
                    del found[0]
    except (CroniterError, ValueError) as error:
        raise CronError(str(error)) from None


def latest_firing(schedule: Schedule, after: datetime, before: datetime) -> datetime | None:
    """The schedule's last firing time `t` with `after < t <= before` inside
    its start/end bounds, or None: the one missed firing a schedule catches
    up on after downtime. Costs one step of croniter, however long ago
    `after` is."""
    upper = before
    if schedule.end_time is not None and schedule.end_time < upper:
        upper = schedule.end_time
    # Firings fall on whole seconds, and get_prev is strict: start one
    # second after `upper` rounded down.
    base = upper.replace(microsecond=0) + timedelta(seconds=1)
    try:
        series = croniter(schedule.cron, base.astimezone(zone(schedule.time_zone)))
        candidate: datetime = series.get_prev(datetime).astimezone(UTC)
    except (CroniterError, ValueError) as error:
        raise CronError(str(error)) from None
    if candidate <= after or candidate > upper:
        return None
    if schedule.start_time is not None and candidate < schedule.start_time:
        return None
    return candidate
