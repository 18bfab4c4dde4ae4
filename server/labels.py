"""Labels (`key=value` tags on resources) and `filter` strings over them,
for every resource that has labels."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from aster.server.errors import InvalidArgument

LABEL_KEY = r"[a-z][a-z0-9_.\-/]{0,62}"
MAX_LABELS = 64
MAX_VALUE = 63
_KEY = re.compile(rf"^{LABEL_KEY}$")
_AND = re.compile(r"\s+AND\s+")

E = TypeVar("E")


def validate_labels(labels: Mapping[str, str], field: str) -> None:
    """Raises InvalidArgument (naming `field`) for too many labels, a bad key
    or a too-long value."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"{field}: at most {MAX_LABELS} labels", field=field)
    for key, value in labels.items():
        if not _KEY.match(key):
            raise InvalidArgument(
                f"{field}: key {key[:80]!r} must be lower-case letters, digits, '_.-/', "
                "starting with a letter, at most 63 characters",
                field=field,
            )
        if len(value) > MAX_VALUE:
            raise InvalidArgument(
                f"{field}: value of {key!r} must be at most {MAX_VALUE} characters", field=field
            )


@dataclass(frozen=True)
class LabelFilter(Generic[E]):
    """A parsed filter: one optional enum condition and label conditions."""

    value: E | None = None
    labels_equal: tuple[tuple[str, str], ...] = ()
    labels_present: tuple[str, ...] = ()


@functools.cache
def _condition(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"""^(?:
            (?P<field>{re.escape(name)})\s*=\s*(?P<enum>"?[A-Za-z_]+"?)
          | labels\.(?P<key>{LABEL_KEY})\s*
            (?:=\s*(?P<value>"[^"]*"|[A-Za-z0-9_.\-/]+)|:\s*(?P<any>\*))
        )$""",
        re.VERBOSE,
    )


def parse_label_filter(
    text: str, name: str, values: Mapping[str, E], enum_prefix: str
) -> LabelFilter[E]:
    """Parses `<name>=<VALUE> AND labels.<key>=<value> AND labels.<key>:*`;
    INVALID_ARGUMENT naming the part that does not parse."""
    condition = _condition(name)
    text = text.strip()
    if not text:
        return LabelFilter()
    chosen: E | None = None
    equal: list[tuple[str, str]] = []
    present: list[str] = []
    for part in _AND.split(text):
        match = condition.match(part.strip())
        if match is None:
            raise InvalidArgument(
                f"filter: cannot parse {part.strip()!r}; use {name}=<{name.upper()}>, "
                "labels.<key>=<value> or labels.<key>:*, joined by AND",
                field="filter",
            )
        if match["field"]:
            given = match["enum"].strip('"').upper().removeprefix(enum_prefix)
            if given not in values:
                raise InvalidArgument(
                    f"filter: unknown {name} {match['enum']!r}; use {' or '.join(values)}",
                    field="filter",
                )
            chosen = values[given]
        elif match["any"]:
            present.append(match["key"])
        else:
            equal.append((match["key"], match["value"].strip('"')))
    return LabelFilter(chosen, tuple(equal), tuple(present))
