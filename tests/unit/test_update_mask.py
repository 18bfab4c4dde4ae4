"""Update masks over domain dataclasses."""

from __future__ import annotations

import pytest

from aster.server.agents.models import AgentSpec, ModelConfig
from aster.server.agents.service import UPDATABLE_PATHS
from aster.server.errors import InvalidArgument
from aster.server.update_mask import apply_update_mask

CURRENT = AgentSpec(
    display_name="old", description="keep", model=ModelConfig(provider="openai", model="a")
)
PATCH = AgentSpec(
    display_name="new", description="", model=ModelConfig(provider="scripted", model="b")
)


def test_only_masked_fields_change() -> None:
    result = apply_update_mask(CURRENT, PATCH, ["display_name", "model.model"], UPDATABLE_PATHS)
    assert result.display_name == "new"
    assert result.description == "keep"
    assert result.model.provider == "openai"
    assert result.model.model == "b"
    assert CURRENT.display_name == "old"  # the input is not mutated


def test_star_replaces_everything() -> None:
    assert apply_update_mask(CURRENT, PATCH, ["*"], UPDATABLE_PATHS) == PATCH


@pytest.mark.parametrize("paths", [["id"], ["etag"], ["nope"], ["model.nope"], ["*", "labels"], []])
def test_bad_masks_are_invalid(paths: list[str]) -> None:
    with pytest.raises(InvalidArgument) as caught:
        apply_update_mask(CURRENT, PATCH, paths, UPDATABLE_PATHS)
    assert caught.value.field == "update_mask"
