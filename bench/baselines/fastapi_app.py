"""Baseline (d) of bench/unary.py: `GET /v1/agents/{id}` in FastAPI.

It reads the row through the same code as Aster's GetAgent
(`AgentRepository.get` on the same SQLAlchemy model and SQLite file) and
returns it as JSON shaped like the edge's transcoded reply. The database URL
comes from ASTER_BENCH_DATABASE_URL. Run it with uvicorn:

    uvicorn --app-dir bench/baselines fastapi_app:app --port 8000
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException

from aster.server.agents.models import Agent
from aster.server.errors import NotFound
from aster.server.storage.agent_repository import AgentRepository
from aster.server.storage.database import Database

TENANT = "default"

database = Database(os.environ["ASTER_BENCH_DATABASE_URL"])
repository = AgentRepository(database)


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """Closes the engine at shutdown."""
    yield
    await database.close()


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


def agent_json(agent: Agent) -> dict[str, Any]:
    """The agent as the edge renders it (proto field names, defaults included)."""
    spec, model = agent.spec, agent.spec.model
    model_json: dict[str, Any] = {"provider": model.provider, "model": model.model}
    if model.temperature is not None:
        model_json["temperature"] = model.temperature
    if model.max_output_tokens is not None:
        model_json["max_output_tokens"] = model.max_output_tokens
    if model.api_key is not None:
        model_json["api_key"] = {"env": model.api_key.env} if model.api_key.env else {}
    model_json.update(base_url=model.base_url, params=model.params)
    return {
        "id": agent.id,
        "display_name": spec.display_name,
        "description": spec.description,
        "instructions": spec.instructions,
        "model": model_json,
        "tools": spec.tools,
        "labels": spec.labels,
        "metadata": spec.metadata,
        "state": f"AGENT_STATE_{spec.state.value}",
        "create_time": _timestamp(agent.create_time),
        "update_time": _timestamp(agent.update_time),
        "etag": agent.etag,
    }


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@app.get("/v1/agents/{agent_id}")
async def get_agent(agent_id: str) -> dict[str, Any]:
    """One agent, or 404."""
    try:
        agent = await repository.get(TENANT, agent_id)
    except NotFound:
        raise HTTPException(status_code=404, detail=f"agent {agent_id!r} not found") from None
    return agent_json(agent)
