"""The `openai` embedder: any OpenAI-compatible embeddings endpoint, through
the official SDK."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import openai

from aster.server.errors import Unavailable
from aster.server.memory.embedders.base import Embedder, Vectors, batches, normalized

BATCH_SIZE = 256


class OpenAIEmbedder(Embedder):
    """Embeds with `model` at `base_url` (empty: OpenAI's); the API key comes
    from `api_key` or, when empty, the SDK's OPENAI_API_KEY."""

    name = "openai"

    def __init__(self, model: str, base_url: str = "", api_key: str = "") -> None:
        self.version = model
        self._model = model
        self._client = openai.AsyncOpenAI(
            api_key=api_key or None, base_url=base_url or None, max_retries=2
        )

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit vectors of `texts`, `BATCH_SIZE` texts per request."""
        rows: list[list[float]] = []
        for batch in batches(texts, BATCH_SIZE):
            try:
                response = await self._client.embeddings.create(
                    model=self._model, input=list(batch)
                )
            except openai.APIError as err:
                raise Unavailable(
                    f"the openai embedder failed: {type(err).__name__}: {str(err)[:200]}",
                    embedder="openai",
                ) from err
            ordered = sorted(response.data, key=lambda item: item.index)
            rows.extend(item.embedding for item in ordered)
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return normalized(np.asarray(rows, dtype=np.float32))

    async def aclose(self) -> None:
        """Closes the HTTP client."""
        await self._client.close()
