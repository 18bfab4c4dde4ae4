"""The interface of every embedder, and the errors of choosing one."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from aster.server.errors import FailedPrecondition

Vectors = npt.NDArray[np.float32]


class EmbedderUnavailable(FailedPrecondition):
    """The chosen embedder cannot run here (a missing extra, no embedder)."""


class Embedder(abc.ABC):
    """Turns texts into unit-length float32 vectors. `name` and `version`
    identify the vector space: vectors of different (name, version) pairs are
    never compared."""

    name: str
    version: str

    @property
    def key(self) -> str:
        """`name@version`: the vector space's identity."""
        return f"{self.name}@{self.version}"

    @abc.abstractmethod
    async def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit vector per text, shape (len(texts), dimensions). Runs off
        the event loop and in batches."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Releases what the embedder holds."""


def normalized(vectors: npt.NDArray[np.floating]) -> Vectors:
    """`vectors` as float32 rows of unit length (zero rows stay zero)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    result: Vectors = (array / norms).astype(np.float32, copy=False)
    return result


def batches(texts: Sequence[str], size: int) -> list[Sequence[str]]:
    """`texts` cut into consecutive batches of at most `size`."""
    return [texts[i : i + size] for i in range(0, len(texts), size)]
