"""Semantic memory (repository, exact vector index, service, consolidation)
on SQLite and PostgreSQL, with a deterministic bag-of-words embedder."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from aster.server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from aster.server.memory.consolidation import Consolidator, Summarizer, clusters
from aster.server.memory.semantic_models import MemorySource, NewMemory, Scope, SearchQuery
from aster.server.memory.semantic_service import SemanticMemoryService
from aster.server.memory.vector_index import AutoVectorIndex, ExactVectorIndex
from aster.server.storage.database import Database
from aster.server.storage.semantic_memory_repository import SemanticMemoryRepository
from tests.fakes.embedders import BagOfWordsEmbedder

T1, T2 = "tenant-one", "tenant-two"


def service(database: Database, version: str = "1") -> SemanticMemoryService:
    repository = SemanticMemoryRepository(database)
    return SemanticMemoryService(
        repository, BagOfWordsEmbedder(version), AutoVectorIndex(repository)
    )


def consolidator(memories: SemanticMemoryService) -> Consolidator:
    return Consolidator(memories, Summarizer(None, None))


async def add(memories: SemanticMemoryService, text: str, tenant: str = T1, **kw: object) -> str:
    scope = Scope(**{k: str(v) for k, v in kw.items() if k.endswith("_id")})
    metadata = kw.get("metadata", {})
    assert isinstance(metadata, dict)
    return (await memories.add(tenant, NewMemory(text, metadata, scope))).id


async def search(memories: SemanticMemoryService, query: str, **kw: object) -> list[str]:
    tenant = str(kw.pop("tenant", T1))
    scope = Scope(**{k: str(kw.pop(k)) for k in list(kw) if k.endswith("_id")})
    hits = await memories.search(
        tenant,
        SearchQuery(query=query, scope=scope, **kw),  # type: ignore[arg-type]
    )
    return [h.memory.text for h in hits]


async def test_add_get_and_search_rank_by_cosine(database: Database) -> None:
    memories = service(database)
    first = await add(memories, "the user likes green tea", metadata={"kind": "pref"})
    await add(memories, "the office is in Lyon")
    await add(memories, "green tea is served at noon")
    stored = await memories.get(T1, first)
    assert stored.text == "the user likes green tea"
    assert stored.metadata == {"kind": "pref"}
    assert (stored.embedder, stored.embedder_version) == ("bag-of-words", "1")
    hits = await memories.search(T1, SearchQuery(query="the user likes green tea", top_k=3))
    assert hits[0].memory.id == first
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[-1].memory.text == "the office is in Lyon"
    assert await search(memories, "tea served at noon", top_k=1) == ["green tea is served at noon"]


async def test_filters_scope_metadata_and_min_score(database: Database) -> None:
    memories = service(database)
    await add(memories, "alpha fact one", agent_id="agt-a", metadata={"topic": "x"})
    await add(memories, "alpha fact two", agent_id="agt-b", metadata={"topic": "y"})
    await add(memories, "alpha fact three", agent_id="agt-a", session_id="ses-1")
    await add(memories, "alpha fact tenant")
    assert sorted(await search(memories, "alpha fact", agent_id="agt-a")) == [
        "alpha fact one",
        "alpha fact three",
    ]
    assert await search(memories, "alpha", session_id="ses-1") == ["alpha fact three"]
    assert await search(memories, "alpha", agent_id="agt-none") == []
    assert await search(memories, "alpha", metadata_filter={"topic": "y"}) == ["alpha fact two"]
    assert await search(memories, "alpha", metadata_filter={"topic": "z"}) == []
    assert len(await search(memories, "alpha fact")) == 4
    assert await search(memories, "alpha fact one", min_score=0.99) == ["alpha fact one"]
    assert await search(memories, "unrelated words", min_score=0.5) == []


async def test_metadata_filter_widens_past_the_first_candidates(database: Database) -> None:
    memories = service(database)
    for i in range(30):
        await add(memories, f"common words number {i}", metadata={"rare": i == 29})
    assert await search(memories, "common words", top_k=1, metadata_filter={"rare": True}) == [
        "common words number 29"
    ]


async def test_tenants_are_isolated(database: Database) -> None:
    memories = service(database)
    mine = await add(memories, "a secret of tenant one")
    assert await search(memories, "secret", tenant=T2) == []
    with pytest.raises(NotFound):
        await memories.get(T2, mine)
    with pytest.raises(NotFound):
        await memories.provenance(T2, mine)
    # The same id may exist in another tenant.
    await memories.add(T2, NewMemory("other"), mine)
    assert (await memories.get(T1, mine)).text == "a secret of tenant one"


async def test_proposed_ids_and_bad_input(database: Database) -> None:
    memories = service(database)
    await memories.add(T1, NewMemory("hello"), "my-memory")
    with pytest.raises(AlreadyExists):
        await memories.add(T1, NewMemory("again"), "my-memory")
    with pytest.raises(InvalidArgument, match="memory_id"):
        await memories.add(T1, NewMemory("x"), "Bad Id")
    with pytest.raises(InvalidArgument, match=r"memory\.text"):
        await memories.add(T1, NewMemory("   "))
    with pytest.raises(InvalidArgument, match="agent_id"):
        await memories.add(T1, NewMemory("x", scope=Scope(agent_id="BAD ID")))
    with pytest.raises(InvalidArgument, match="top_k"):
        await memories.search(T1, SearchQuery(query="x", top_k=-1))
    with pytest.raises(InvalidArgument, match="query"):
        await memories.search(T1, SearchQuery(query=""))
    with pytest.raises(InvalidArgument, match="min_score"):
        await memories.search(T1, SearchQuery(query="x", min_score=float("nan")))
    with pytest.raises(InvalidArgument, match="similarity_threshold"):
        await consolidator(memories).consolidate(T1, Scope(), 1.5)


async def test_without_an_embedder_calls_name_the_extra(database: Database) -> None:
    repository = SemanticMemoryRepository(database)
    memories = SemanticMemoryService(repository, None, AutoVectorIndex(repository))
    with pytest.raises(FailedPrecondition, match=r"aster\[embed\]"):
        await memories.add(T1, NewMemory("x"))


async def test_a_changed_embedder_never_mixes_vectors(database: Database) -> None:
    old = service(database, version="1")
    await add(old, "remembered with the old embedder")
    new = service(database, version="2")
    assert await search(new, "remembered with the old embedder") == []
    await add(new, "remembered with the new embedder")
    assert await search(new, "remembered embedder") == ["remembered with the new embedder"]
    assert await search(old, "remembered embedder") == ["remembered with the old embedder"]


async def test_replicas_see_each_others_writes(database: Database) -> None:
    one, two = service(database), service(database)
    await add(one, "first fact about cats")
    assert await search(two, "cats") == ["first fact about cats"]  # cached now
    await add(one, "second fact about cats")
    assert sorted(await search(two, "cats")) == ["first fact about cats", "second fact about cats"]
    await add(one, "first fact about cats!")  # a near-duplicate
    report = await consolidator(one).consolidate(T1, Scope(), 0.95)
    assert len(report.superseded_ids) == 2
    # replica two drops the superseded ones from its cached matrix (the
    # merged text is the longest source, as there is no agent model)
    assert sorted(await search(two, "cats")) == ["first fact about cats!", "second fact about cats"]
    found = await two.search(T1, SearchQuery(query="cats"))
    assert {h.memory.id for h in found}.isdisjoint(report.superseded_ids)
    everything = await two.search(T1, SearchQuery(query="cats", include_superseded=True))
    assert len(everything) == 4


async def test_consolidation_merges_supersedes_and_keeps_lineage(database: Database) -> None:
    memories = service(database)
    scope = {"agent_id": "agt-x"}
    a = await add(memories, "the user lives in Paris", **scope, metadata={"a": 1})
    b = await add(memories, "the user lives in Paris France", **scope, metadata={"b": 2})
    c = await add(memories, "the user plays the cello", **scope)
    other_scope = await add(memories, "the user lives in Paris", agent_id="agt-y")
    report = await consolidator(memories).consolidate(T1, Scope(agent_id="agt-x"), 0.85)
    assert report.merged_ids == (a, b)
    assert report.superseded_ids == (a, b)
    assert len(report.created_ids) == 1
    merged = await memories.get(T1, report.created_ids[0])
    # without an agent model the merge is extractive: the longest text
    assert merged.text == "the user lives in Paris France"
    assert merged.metadata == {"a": 1, "b": 2}
    assert merged.consolidated_from == (a, b)
    assert merged.scope == Scope(agent_id="agt-x")
    assert (await memories.get(T1, a)).superseded_by == merged.id
    assert (await memories.get(T1, c)).superseded_by == ""
    assert (await memories.get(T1, other_scope)).superseded_by == ""
    # idempotent: nothing left to merge
    again = await consolidator(memories).consolidate(T1, Scope(agent_id="agt-x"), 0.85)
    assert again.created_ids == again.merged_ids == again.superseded_ids == ()

    # a second generation: the chain of provenance goes two levels down
    d = await add(memories, "the user lives in Paris France now", **scope)
    second = await consolidator(memories).consolidate(T1, Scope(agent_id="agt-x"), 0.85)
    assert second.merged_ids == (merged.id, d)
    provenance = await memories.provenance(T1, second.created_ids[0])
    assert provenance.tenant == T1
    assert [p.memory.id for p in provenance.consolidated_from] == [merged.id, d]
    grand = provenance.consolidated_from[0].consolidated_from
    assert [p.memory.id for p in grand] == [a, b]
    assert provenance.consolidated_from[1].consolidated_from == ()


async def test_provenance_records_the_source(database: Database) -> None:
    memories = service(database)
    memory = await memories.add(
        T1,
        NewMemory(
            "from a tool call",
            scope=Scope(agent_id="agt-a"),
            source=MemorySource(run_id="run-1", session_id="ses-1", tool_call_id="call_1"),
        ),
    )
    provenance = await memories.provenance(T1, memory.id)
    assert provenance.memory.source == MemorySource(
        run_id="run-1", session_id="ses-1", tool_call_id="call_1"
    )
    assert provenance.memory.create_time == memory.create_time
    assert provenance.memory.embedder == "bag-of-words"


def test_clusters_are_connected_components() -> None:
    import numpy as np

    vectors = np.asarray([[1, 0], [0.99, 0.14], [0, 1], [0.1, 0.99], [0.7, 0.7]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert clusters(vectors, 0.95) == [[0, 1], [2, 3]]
    assert clusters(vectors, 1.01) == []


async def test_exact_index_refreshes_incrementally(database: Database) -> None:
    repository = SemanticMemoryRepository(database)
    index = ExactVectorIndex(repository)
    memories = SemanticMemoryService(repository, BagOfWordsEmbedder(), index)
    for i in range(5):
        await add(memories, f"item {i} about dogs")
    assert len(await search(memories, "dogs")) == 5
    await add(memories, "item 5 about dogs")
    assert len(await search(memories, "dogs")) == 6


async def test_consolidation_promotes_working_memory_once(database: Database) -> None:
    from aster.server.memory.working_models import EntryValue
    from aster.server.memory.working_service import ScopeChecker, WorkingMemoryService
    from aster.server.storage.working_memory_repository import WorkingMemoryRepository

    working = WorkingMemoryService(WorkingMemoryRepository(database), ScopeChecker(None, None))
    memories = service(database)
    scope = Scope(agent_id="agt-w")
    entry = await working.set(T1, scope, "user:city", EntryValue(value={"name": "Oslo"}))
    await working.set(T1, scope, "user:tea", EntryValue(value="green tea, no sugar"))
    await working.set(T1, Scope(agent_id="agt-other"), "user:city", EntryValue(value="Rome"))
    promote = Consolidator(memories, Summarizer(None, None), working)
    report = await promote.consolidate(T1, scope, 0.99, promote_working=True)
    assert len(report.created_ids) == 2 and report.merged_ids == ()
    found = await memories.search(T1, SearchQuery(query="user city name Oslo", scope=scope))
    city = found[0].memory
    assert city.text == 'user:city: {"name": "Oslo"}'
    assert city.source.working_memory_entry_id == entry.id
    assert city.metadata == {"working_memory_key": "user:city"}
    assert {h.memory.text for h in found} == {
        'user:city: {"name": "Oslo"}',
        "user:tea: green tea, no sugar",
    }
    # idempotent: nothing is promoted twice
    again = await promote.consolidate(T1, scope, 0.99, promote_working=True)
    assert again.created_ids == ()
    # a changed value is promoted anew
    await working.set(T1, scope, "user:city", EntryValue(value={"name": "Bergen"}))
    third = await promote.consolidate(T1, scope, 0.99, promote_working=True)
    assert len(third.created_ids) == 1


async def test_metadata_filter_compares_json_values(database: Database) -> None:
    memories = service(database)
    await add(memories, "beta fact flag", metadata={"pinned": True, "n": 1, "tags": ["a", 2]})
    await add(memories, "beta fact count", metadata={"pinned": 1, "n": 2.0})
    assert await search(memories, "beta fact", metadata_filter={"pinned": True}) == [
        "beta fact flag"
    ]
    # A number is not a boolean (Python's True == 1 does not hold in JSON)...
    assert await search(memories, "beta fact", metadata_filter={"pinned": 1.0}) == [
        "beta fact count"
    ]
    # ...but numbers compare by value, as a Struct sends every number as a double.
    assert await search(memories, "beta fact", metadata_filter={"n": 1.0}) == ["beta fact flag"]
    assert await search(memories, "beta fact", metadata_filter={"n": 2}) == ["beta fact count"]
    assert await search(memories, "beta fact", metadata_filter={"tags": ["a", 2.0]}) == [
        "beta fact flag"
    ]
    assert await search(memories, "beta fact", metadata_filter={"tags": ["a"]}) == []


class _Rewriter(Summarizer):
    """A model whose summary differs from every source: here, the text of
    another memory of the scope."""

    def __init__(self, text: str) -> None:
        super().__init__(None, None)
        self.text = text

    async def merge(self, tenant: str, scope: Scope, texts: Sequence[str]) -> str:
        return self.text


async def test_consolidation_merges_until_nothing_is_a_near_duplicate(database: Database) -> None:
    memories = service(database)
    scope = Scope(agent_id="agt-r")
    a = await add(memories, "cats purr when happy", agent_id="agt-r")
    b = await add(memories, "cats purr when happy indeed", agent_id="agt-r")
    c = await add(memories, "dogs bark at night", agent_id="agt-r")
    # The summary of a and b is a near-duplicate of c: one call merges it too.
    merger = Consolidator(memories, _Rewriter("dogs bark at night"))
    report = await merger.consolidate(T1, scope, 0.85)
    first, second = report.created_ids
    assert report.merged_ids[:2] == (a, b)
    assert set(report.merged_ids[2:]) == {first, c}
    assert report.superseded_ids == report.merged_ids
    assert (await memories.get(T1, second)).consolidated_from == tuple(report.merged_ids[2:])
    # Idempotent: a second call finds nothing, and the lineage reaches a and b.
    again = await merger.consolidate(T1, scope, 0.85)
    assert again.created_ids == again.merged_ids == ()
    provenance = await memories.provenance(T1, second)
    lineage = {p.memory.id for p in provenance.consolidated_from}
    assert lineage == {first, c}
