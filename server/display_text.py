"""The human-readable names and descriptions resources carry, and their
limits: one rule for agents, rooms and workflows."""

from __future__ import annotations

from aster.server.errors import InvalidArgument

MAX_DISPLAY_NAME = 200
MAX_DESCRIPTION = 2_000


def check_display_name(value: str, field: str) -> None:
    """Raises InvalidArgument naming `field` unless `value` is a non-blank
    name of at most MAX_DISPLAY_NAME characters."""
    if not value.strip():
        raise InvalidArgument(f"{field}: must not be empty", field=field)
    if len(value) > MAX_DISPLAY_NAME:
        raise InvalidArgument(
            f"{field}: must be at most {MAX_DISPLAY_NAME} characters", field=field
        )


def check_description(value: str, field: str) -> None:
    """Raises InvalidArgument naming `field` if `value` is longer than
    MAX_DESCRIPTION characters."""
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument(f"{field}: must be at most {MAX_DESCRIPTION} characters", field=field)
