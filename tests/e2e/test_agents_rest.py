"""AgentService through the Envoy edge: REST/JSON, status mapping, bad input."""

from __future__ import annotations

import uuid

import httpx
import pytest


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create(http: httpx.AsyncClient, **body: object) -> dict[str, object]:
    response = await http.post("/v1/agents", json={"display_name": "Helper", **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def assert_error(
    response: httpx.Response, status: int, grpc_code: int, text: str = ""
) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"code", "message", "details"}, body
    assert body["code"] == grpc_code, body
    assert text in body["message"], body
    return body  # type: ignore[no-any-return]


async def test_crud_cycle_over_rest(http: httpx.AsyncClient) -> None:
    created = await create(
        http,
        instructions="Be brief.",
        model={
            "provider": "anthropic",
            "model": "claude",
            "temperature": 0.3,
            "api_key": {"env": "K"},
        },
        labels={"team": "rest"},
        metadata={"k": [1, "two"]},
    )
    # snake_case names and default values are printed, as the seeds' clients expect
    assert created["display_name"] == "Helper"
    assert created["description"] == ""
    assert created["state"] == "AGENT_STATE_ACTIVE"
    assert created["model"] == {
        "provider": "anthropic",
        "model": "claude",
        "temperature": 0.3,
        "api_key": {"env": "K"},
        "base_url": "",
        "params": {},
    }
    agent_id = created["id"]

    fetched = (await http.get(f"/v1/agents/{agent_id}")).json()
    assert fetched == created

    patched = await http.patch(
        f"/v1/agents/{agent_id}",
        params={"update_mask": "display_name,labels"},
        json={
            "display_name": "Renamed",
            "labels": {"team": "rest", "v": "2"},
            "etag": created["etag"],
        },
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["display_name"] == "Renamed"
    assert patched.json()["labels"] == {"team": "rest", "v": "2"}
    assert patched.json()["instructions"] == "Be brief."

    # httpx form-encodes the space as '+', which the edge decodes as a space.
    listed = (
        await http.get("/v1/agents", params={"filter": "labels.v=2 AND labels.team=rest"})
    ).json()
    assert agent_id in [a["id"] for a in listed["agents"]]

    deleted = await http.delete(f"/v1/agents/{agent_id}", params={"etag": patched.json()["etag"]})
    assert deleted.status_code == 200
    assert deleted.json() == {}
    assert_error(await http.get(f"/v1/agents/{agent_id}"), 404, 5, "not found")


async def test_pagination_over_rest(http: httpx.AsyncClient) -> None:
    team = unique("team")
    ids = [(await create(http, labels={"team": team}))["id"] for _ in range(5)]
    seen, token, pages = [], "", 0
    while True:
        params = {"page_size": "2", "filter": f"labels.team={team}"}
        if token:
            params["page_token"] = token
        page = (await http.get("/v1/agents", params=params)).json()
        seen += [a["id"] for a in page["agents"]]
        token = page["next_page_token"]
        pages += 1
        if not token:
            break
    assert (seen, pages) == (ids, 3)


async def test_every_error_code_maps_to_its_http_status(http: httpx.AsyncClient) -> None:
    # INVALID_ARGUMENT -> 400, with ErrorInfo naming the field
    body = assert_error(
        await http.post("/v1/agents", json={"display_name": ""}), 400, 3, "display_name"
    )
    detail = body["details"][0]  # type: ignore[index]
    assert detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert detail["metadata"]["field"] == "agent.display_name"
    # NOT_FOUND -> 404
    assert_error(await http.get(f"/v1/agents/{unique('nope')}"), 404, 5, "not found")
    # ALREADY_EXISTS -> 409
    agent_id = unique("dup")
    ok = await http.post("/v1/agents", params={"agent_id": agent_id}, json={"display_name": "d"})
    assert ok.status_code == 200 and ok.json()["id"] == agent_id
    again = await http.post("/v1/agents", params={"agent_id": agent_id}, json={"display_name": "d"})
    assert_error(again, 409, 6, agent_id)
    # ABORTED -> 409
    stale = await http.patch(
        f"/v1/agents/{agent_id}",
        params={"update_mask": "display_name"},
        json={"display_name": "x", "etag": "0000000000000000"},
    )
    assert_error(stale, 409, 10, "etag")
    # FAILED_PRECONDITION -> 400
    assert_error(await http.post(f"/v1/agents/{agent_id}/resume", json={}), 400, 9, "pool")
    # Envoy's own errors have the same shape: unknown path -> 404
    assert_error(await http.get("/v1/no-such-thing"), 404, 5)


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (b'{"display_name":', ""),
        (b"not json at all", ""),
        (b'{"display_name": 5}', "display_name"),
        (b'{"display_name": "x", "labels": ["a"]}', "labels"),
        (b'{"display_name": "x", "state": "NOT_A_STATE"}', "state"),
        (b'{"display_name": "x", "model": {"temperature": "hot"}}', "temperature"),
    ],
)
async def test_malformed_json_and_wrong_types_are_400(
    http: httpx.AsyncClient, content: bytes, text: str
) -> None:
    response = await http.post(
        "/v1/agents", content=content, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, 3, text)


async def test_unknown_body_fields_are_dropped_by_the_edge(http: httpx.AsyncClient) -> None:
    # The proto3 JSON mapping drops unknown fields, and Envoy's transcoder has
    # no option to refuse them; docs/agents.md warns about it.
    response = await http.post("/v1/agents", json={"display_name": "x", "dispaly_name": "typo"})
    assert response.status_code == 200
    assert "dispaly_name" not in response.json()


async def test_unknown_query_parameters_and_bad_numbers_are_400(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v1/agents", params={"bogus": "1"}), 400, 3, "bogus")
    assert_error(await http.get("/v1/agents", params={"page_size": "many"}), 400, 3)
    assert_error(await http.get("/v1/agents", params={"page_size": "-1"}), 400, 3, "page_size")


async def test_oversized_body_is_rejected_not_5xx(http: httpx.AsyncClient) -> None:
    body = b'{"display_name": "x", "instructions": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    response = await http.post(
        "/v1/agents", content=body, headers={"content-type": "application/json"}
    )
    assert 400 <= response.status_code < 500, response.status_code
    assert response.json()["code"] in (3, 8)


async def test_health_and_metrics_on_the_edge(http: httpx.AsyncClient) -> None:
    health = await http.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "healthy"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["timestamp"].endswith("Z")
    assert body["version"]
    await http.get("/v1/agents")
    metrics = await http.get("/metrics")
    assert metrics.status_code == 200
    assert "text/plain" in metrics.headers["content-type"]
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="ListAgents"' in metrics.text
    assert "grpc_server_handling_seconds_bucket" in metrics.text
    assert "grpc_server_started_total" in metrics.text


async def test_system_info_over_rest(http: httpx.AsyncClient) -> None:
    info = (await http.get("/v1/system/info")).json()
    assert info["storage_backend"] == "sqlite"
    assert info["workers"] == 1
    stats = (await http.get("/v1/system/stats")).json()
    assert int(stats["resources"]["agents"]) >= 0
