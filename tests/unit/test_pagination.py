"""Page sizes and page tokens."""

from __future__ import annotations

import pytest

from aster.server.errors import InvalidArgument
from aster.server.pagination import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Cursor,
    decode_token,
    encode_token,
    page_size,
)


def test_page_size_defaults_and_caps() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE
    assert page_size(7) == 7
    assert page_size(10**6) == MAX_PAGE_SIZE


def test_negative_page_size_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_size(-1)
    assert caught.value.field == "page_size"


def test_token_round_trips() -> None:
    cursor = Cursor("2026-01-01T00:00:00+00:00", "agt_x")
    assert decode_token(encode_token(cursor, "filter=a"), "filter=a") == cursor
    assert decode_token("", "filter=a") is None


@pytest.mark.parametrize("token", ["garbage", "!!!", "W10", "eyJhIjoxfQ"])
def test_malformed_tokens_are_invalid(token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode_token(token, "q")
    assert caught.value.field == "page_token"


def test_a_token_is_bound_to_its_query() -> None:
    token = encode_token(Cursor("k", "i"), "filter=a")
    with pytest.raises(InvalidArgument, match="different filter"):
        decode_token(token, "filter=b")
