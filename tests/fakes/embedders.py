"""A deterministic embedder for tests: hashed bag of words, unit length.
Texts sharing words get a cosine similarity above 0; equal word sets get 1."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from aster.server.memory.embedders.base import Embedder, Vectors, normalized

DIMENSIONS = 256
_WORD = re.compile(r"[a-z0-9]+")


def bag_of_words(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """The hashed word counts of `text` (not normalised)."""
    vector = [0.0] * dimensions
    for word in _WORD.findall(text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        vector[int.from_bytes(digest[:4], "big") % dimensions] += 1.0
    return vector


class BagOfWordsEmbedder(Embedder):
    """Embeds by hashed word counts; `version` names the vector space."""

    name = "bag-of-words"

    def __init__(self, version: str = "1") -> None:
        self.version = version
        self.calls: list[int] = []

    async def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls.append(len(texts))
        return normalized(np.asarray([bag_of_words(t) for t in texts], dtype=np.float32))
