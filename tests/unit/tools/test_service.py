"""The tool registry on SQLite and PostgreSQL: CRUD, etags, builtins and
pagination across builtin and stored tools."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from aster.server.errors import (
    AlreadyExists,
    EtagMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from aster.server.storage.database import Database
from aster.server.storage.tool_repository import ToolRepository
from aster.server.tools.builtins import BUILTIN_CREATE_TIME
from aster.server.tools.models import HttpToolConfig, SecretRef, ToolDefinition, ToolKind
from aster.server.tools.service import ToolService

BUILTINS = ["calculator", "get_time", "http_request"]


@pytest.fixture
def service(database: Database) -> ToolService:
    return ToolService(ToolRepository(database))


def weather(name: str = "get_weather", **labels: str) -> ToolDefinition:
    return ToolDefinition(
        name=name,
        description="Weather by city",
        parameters={
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
        kind=ToolKind.HTTP,
        http=HttpToolConfig(
            url="https://weather.example.com/v1",
            method="get",
            headers={"Authorization": SecretRef(env="WEATHER_TOKEN"), "X-Key": SecretRef(file="k")},
            timeout=timedelta(seconds=2.5),
            max_response_bytes=4096,
        ),
        labels=labels,
        metadata={"owner": {"team": "ml"}, "n": [1, 2]},
    )


async def test_round_trip_keeps_every_field(service: ToolService) -> None:
    created = await service.create("t1", weather(team="ml"))
    assert created.id.startswith("tool_")
    assert created.definition.http.method == "GET"  # normalized
    fetched = await service.get("t1", created.id)
    assert fetched.definition == created.definition
    assert fetched.definition.http.timeout == timedelta(seconds=2.5)
    assert fetched.definition.http.headers["X-Key"] == SecretRef(file="k")
    assert fetched.create_time == created.create_time
    assert fetched.etag == created.etag
    assert await service.count("t1") == 1


async def test_builtins_are_visible_in_every_tenant(service: ToolService) -> None:
    for tenant in ("t1", "t2"):
        calculator = await service.get(tenant, "calculator")
        assert calculator.definition.kind is ToolKind.BUILTIN
        assert calculator.definition.parameters["required"] == ["expression"]
        assert calculator.create_time == BUILTIN_CREATE_TIME
        assert calculator.etag
    page = await service.list("t9", 0, "", "")
    assert [t.id for t in page.tools] == BUILTINS
    assert page.next_page_token == ""
    assert await service.count("t9") == 0


async def test_builtins_cannot_be_created_changed_or_deleted(service: ToolService) -> None:
    with pytest.raises(AlreadyExists) as exists:
        await service.create("t1", weather(), proposed_id="calculator")
    assert exists.value.field == "tool_id"
    builtin_kind = weather()
    builtin_kind.kind = ToolKind.BUILTIN
    with pytest.raises(InvalidArgument) as invalid:
        await service.create("t1", builtin_kind)
    assert invalid.value.field == "tool.kind"
    with pytest.raises(FailedPrecondition):
        await service.update("t1", "get_time", weather(), ["description"], "")
    with pytest.raises(FailedPrecondition):
        await service.delete("t1", "http_request", "")


async def test_proposed_ids_duplicates_and_tenants(service: ToolService) -> None:
    await service.create("t1", weather(), proposed_id="weather")
    with pytest.raises(AlreadyExists):
        await service.create("t1", weather(), proposed_id="weather")
    await service.create("t2", weather(), proposed_id="weather")  # another tenant's
    with pytest.raises(InvalidArgument) as caught:
        await service.create("t1", weather(), proposed_id="Bad Id")
    assert caught.value.field == "tool_id"
    with pytest.raises(NotFound):
        await service.get("t3", "weather")
    with pytest.raises(NotFound):
        await service.delete("t3", "weather", "")
    with pytest.raises(InvalidArgument) as malformed:
        await service.get("t1", "../etc")
    assert malformed.value.field == "id"


async def test_pagination_walks_builtins_then_stored_once(service: ToolService) -> None:
    created = [await service.create("t1", weather(f"w{i}")) for i in range(5)]
    await service.create("t2", weather("elsewhere"))
    expected = BUILTINS + [t.id for t in created]
    for size in (1, 2, 3, 4, 8, 9):
        seen, token, pages = [], "", 0
        while True:
            page = await service.list("t1", size, token, "")
            assert len(page.tools) <= size
            seen += [t.id for t in page.tools]
            pages += 1
            token = page.next_page_token
            if not token:
                break
        assert seen == expected, size
        assert pages == max(1, -(-len(expected) // size)), size
    with pytest.raises(InvalidArgument) as caught:
        await service.list("t1", 2, page.next_page_token or "bm90LWEtdG9rZW4", "")
    assert caught.value.field == "page_token"


async def test_filters_apply_to_builtins_and_stored(service: ToolService) -> None:
    ml = await service.create("t1", weather("a", team="ml", tier="gold"))
    web = await service.create("t1", weather("b", team="web"))
    ids = lambda page: [t.id for t in page.tools]  # noqa: E731
    assert ids(await service.list("t1", 0, "", "kind=BUILTIN")) == BUILTINS
    assert ids(await service.list("t1", 0, "", "kind=HTTP")) == [ml.id, web.id]
    assert ids(await service.list("t1", 0, "", "labels.team=ml")) == [ml.id]
    assert ids(await service.list("t1", 0, "", "labels.tier:* AND kind=HTTP")) == [ml.id]
    first = await service.list("t1", 2, "", "kind=HTTP")
    assert first.next_page_token == ""
    builtin_page = await service.list("t1", 2, "", "kind=BUILTIN")
    rest = await service.list("t1", 2, builtin_page.next_page_token, "kind=BUILTIN")
    assert ids(builtin_page) + ids(rest) == BUILTINS
    with pytest.raises(InvalidArgument):
        await service.list("t1", 2, builtin_page.next_page_token, "kind=HTTP")


async def test_update_masks_and_etags(service: ToolService) -> None:
    tool = await service.create("t1", weather())
    patch = ToolDefinition(description="New", http=HttpToolConfig(timeout=timedelta(seconds=9)))
    updated = await service.update("t1", tool.id, patch, ["description", "http.timeout"], tool.etag)
    assert updated.definition.description == "New"
    assert updated.definition.http.timeout == timedelta(seconds=9)
    assert updated.definition.http.url == "https://weather.example.com/v1"
    assert updated.definition.name == "get_weather"
    assert updated.etag != tool.etag
    with pytest.raises(EtagMismatch):
        await service.update("t1", tool.id, patch, ["description"], tool.etag)
    with pytest.raises(InvalidArgument) as bad_path:
        await service.update("t1", tool.id, patch, ["create_time"], "")
    assert bad_path.value.field == "update_mask"
    with pytest.raises(InvalidArgument) as invalid:
        await service.update("t1", tool.id, ToolDefinition(), ["http.url"], "")
    assert invalid.value.field == "tool.http.url"
    replaced = await service.update("t1", tool.id, weather("renamed"), ["*"], "")
    assert replaced.definition.name == "renamed"
    with pytest.raises(EtagMismatch):
        await service.delete("t1", tool.id, tool.etag)
    await service.delete("t1", tool.id, replaced.etag)
    with pytest.raises(NotFound):
        await service.get("t1", tool.id)


async def test_concurrent_updates_with_one_etag_let_one_win(service: ToolService) -> None:
    tool = await service.create("t1", weather())

    async def describe(text: str) -> str:
        try:
            await service.update(
                "t1", tool.id, ToolDefinition(description=text), ["description"], tool.etag
            )
            return "ok"
        except EtagMismatch:
            return "aborted"

    results = await asyncio.gather(*(describe(f"d{i}") for i in range(5)))
    assert sorted(results) == ["aborted"] * 4 + ["ok"]


async def test_specs_for_the_run_loop(service: ToolService) -> None:
    tool = await service.create("t1", weather(), proposed_id="weather")
    bare = weather("no_args")
    bare.parameters = {}
    await service.create("t1", bare, proposed_id="bare")
    specs = await service.specs("t1", ["calculator", "weather", "calculator", "bare"])
    assert [s.name for s in specs] == ["calculator", "get_weather", "no_args"]
    assert specs[1].parameters == tool.definition.parameters
    assert specs[1].description == "Weather by city"
    assert specs[2].parameters == {"type": "object", "properties": {}}
    with pytest.raises(InvalidArgument) as unknown:
        await service.specs("t1", ["calculator", "nope"])
    assert unknown.value.field == "tools"
    assert "'nope'" in unknown.value.message
    with pytest.raises(InvalidArgument):
        await service.specs("t2", ["weather"])  # another tenant's tool
    await service.create("t1", weather("calculator"), proposed_id="my-calc")
    with pytest.raises(InvalidArgument) as clash:
        await service.specs("t1", ["calculator", "my-calc"])
    assert "same name" in clash.value.message
