"""Conversions between well-known protobuf types and Python values, shared by
every servicer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain dict."""
    return json_format.MessageToDict(message)


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
