"""Conversions between well-known protobuf types and Python values, shared by
every servicer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from aster.server.errors import InvalidArgument


def struct_to_dict(message: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """A Struct as a plain dict; INVALID_ARGUMENT naming `field` if it holds
    what JSON cannot (NaN, Infinity)."""
    try:
        return json_format.MessageToDict(message)
    except ValueError:
        raise InvalidArgument(
            f"{field}: numbers must be finite (no NaN or Infinity)", field=field
        ) from None


def to_datetime(message: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A Timestamp as an aware UTC datetime; INVALID_ARGUMENT if out of range."""
    try:
        return message.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{field}: not a valid timestamp", field=field) from None


def to_timedelta(message: duration_pb2.Duration, field: str) -> timedelta:
    """A Duration as a timedelta; INVALID_ARGUMENT if out of range."""
    try:
        return message.ToTimedelta()
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{field}: not a valid duration", field=field) from None


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """A plain dict as a Struct."""
    result = struct_pb2.Struct()
    result.update(value)
    return result


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A datetime as a Timestamp."""
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(value)
    return result
