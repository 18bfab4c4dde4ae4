"""Ids and etags."""

from __future__ import annotations

import pytest

from aster.server.errors import EtagMismatch, InvalidArgument
from aster.server.etags import check_etag, etag_for
from aster.server.ids import check_id, new_id


def test_new_ids_are_valid_unique_and_time_ordered() -> None:
    ids = [new_id("agt") for _ in range(200)]
    assert len(set(ids)) == 200
    for value in ids:
        assert check_id(value, "id") == value
        assert len(value) == 30
    assert sorted(ids)[0][:14] == ids[0][:14]  # the millisecond prefix sorts


@pytest.mark.parametrize("bad", ["", "A", "1abc", "a b", "a" * 64, "agt/../x", "é"])
def test_malformed_ids_are_invalid(bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_id(bad, "agent_id")
    assert caught.value.field == "agent_id"


def test_etags_change_with_the_revision() -> None:
    assert etag_for("a", 1) != etag_for("a", 2)
    check_etag(etag_for("a", 1), "a", 1)
    check_etag("", "a", 1)
    with pytest.raises(EtagMismatch):
        check_etag(etag_for("a", 1), "a", 2)
