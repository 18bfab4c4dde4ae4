"""The rules of semantic-memory requests; errors name the offending field."""

from __future__ import annotations

import json
import math
from typing import Any

from aster.server.errors import InvalidArgument

MAX_TEXT = 20_000
MAX_METADATA_BYTES = 16 * 1024
DEFAULT_TOP_K = 10
MAX_TOP_K = 100


def check_text(text: str, field: str) -> str:
    """`text` if it is not blank and not too long."""
    if not text.strip():
        raise InvalidArgument(f"{field} must not be blank", field=field)
    if len(text) > MAX_TEXT:
        raise InvalidArgument(f"{field} must be at most {MAX_TEXT} characters", field=field)
    return text


def check_metadata(metadata: dict[str, Any], field: str) -> dict[str, Any]:
    """`metadata` if its JSON is at most MAX_METADATA_BYTES."""
    if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"{field} must be at most {MAX_METADATA_BYTES} bytes of JSON", field=field
        )
    return metadata


def top_k(value: int) -> int:
    """0 means DEFAULT_TOP_K; above MAX_TOP_K means MAX_TOP_K; negative is invalid."""
    if value < 0:
        raise InvalidArgument("top_k must not be negative", field="top_k")
    return min(value or DEFAULT_TOP_K, MAX_TOP_K)


def check_min_score(value: float | None) -> float | None:
    """A finite `min_score`, or None."""
    if value is not None and not math.isfinite(value):
        raise InvalidArgument("min_score must be a finite number", field="min_score")
    return value


def check_threshold(value: float, default: float) -> float:
    """A similarity threshold in (0, 1]; 0 means `default`."""
    if not math.isfinite(value) or value < 0 or value > 1:
        raise InvalidArgument(
            "similarity_threshold must be between 0 and 1", field="similarity_threshold"
        )
    return value or default
