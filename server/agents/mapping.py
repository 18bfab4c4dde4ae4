"""Agent messages ⇄ agent domain types."""

from __future__ import annotations

from aster.server.agents.models import (
    Agent,
    AgentSpec,
    AgentState,
    MemoryConfig,
    ModelConfig,
    SecretRef,
)
from aster.server.rpc.convert import dict_to_struct, struct_to_dict, timestamp
from aster.v1 import agent_pb2

_STATE_TO_PROTO = {
    AgentState.ACTIVE: agent_pb2.AGENT_STATE_ACTIVE,
    AgentState.DISABLED: agent_pb2.AGENT_STATE_DISABLED,
}
_STATE_FROM_PROTO = {v: k for k, v in _STATE_TO_PROTO.items()}
_STATE_FROM_PROTO[agent_pb2.AGENT_STATE_UNSPECIFIED] = AgentState.ACTIVE

# Fields of Agent that the server owns; an empty update mask ignores them.
OUTPUT_FIELDS = frozenset({"id", "etag", "create_time", "update_time"})


def spec_from_proto(message: agent_pb2.Agent) -> AgentSpec:
    """The caller-settable fields of `message`."""
    model = message.model
    api_key = None
    if model.HasField("api_key"):
        api_key = SecretRef(env=model.api_key.env, file=model.api_key.file)
    return AgentSpec(
        display_name=message.display_name,
        description=message.description,
        instructions=message.instructions,
        model=ModelConfig(
            provider=model.provider or "scripted",
            model=model.model,
            temperature=model.temperature if model.HasField("temperature") else None,
            max_output_tokens=(
                model.max_output_tokens if model.HasField("max_output_tokens") else None
            ),
            api_key=api_key,
            base_url=model.base_url,
            params=struct_to_dict(model.params, "agent.model.params"),
        ),
        tools=list(message.tools),
        labels=dict(message.labels),
        metadata=struct_to_dict(message.metadata, "agent.metadata"),
        state=_STATE_FROM_PROTO.get(message.state, AgentState.ACTIVE),
        memory=MemoryConfig(
            auto_recall=message.memory.auto_recall,
            recall_top_k=message.memory.recall_top_k,
            recall_min_score=(
                message.memory.recall_min_score
                if message.memory.HasField("recall_min_score")
                else None
            ),
        ),
    )


def set_fields(message: agent_pb2.Agent) -> list[str]:
    """The implied update mask: every caller-settable field `message` sets,
    with `model` expanded to the model fields it sets, so a body with only
    `model.temperature` changes only the temperature."""
    paths = []
    for field, _ in message.ListFields():
        if field.name in ("model", "memory"):
            sub_message = getattr(message, field.name)
            paths += [f"{field.name}.{sub.name}" for sub, _ in sub_message.ListFields()]
        elif field.name not in OUTPUT_FIELDS:
            paths.append(field.name)
    return paths


def agent_to_proto(agent: Agent) -> agent_pb2.Agent:
    """The full message of a stored agent."""
    spec, model = agent.spec, agent.spec.model
    model_message = agent_pb2.ModelConfig(
        provider=model.provider,
        model=model.model,
        temperature=model.temperature,
        max_output_tokens=model.max_output_tokens,
        base_url=model.base_url,
        params=dict_to_struct(model.params),
    )
    if model.api_key is not None:
        if model.api_key.env:
            model_message.api_key.env = model.api_key.env
        elif model.api_key.file:
            model_message.api_key.file = model.api_key.file
    return agent_pb2.Agent(
        id=agent.id,
        display_name=spec.display_name,
        description=spec.description,
        instructions=spec.instructions,
        model=model_message,
        tools=spec.tools,
        labels=spec.labels,
        metadata=dict_to_struct(spec.metadata),
        state=_STATE_TO_PROTO[spec.state],
        create_time=timestamp(agent.create_time),
        update_time=timestamp(agent.update_time),
        etag=agent.etag,
        memory=agent_pb2.AgentMemoryConfig(
            auto_recall=spec.memory.auto_recall,
            recall_top_k=spec.memory.recall_top_k,
            recall_min_score=spec.memory.recall_min_score,
        ),
    )
