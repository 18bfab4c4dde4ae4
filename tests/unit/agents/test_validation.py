"""Agent validation: each broken rule names its field."""

from __future__ import annotations

import pytest

from aster.server.agents.models import AgentSpec, ModelConfig, SecretRef
from aster.server.agents.validation import validate_agent_spec
from aster.server.errors import InvalidArgument


def spec(**changes: object) -> AgentSpec:
    base = AgentSpec(display_name="Helper")
    for name, value in changes.items():
        setattr(base, name, value)
    return base


def test_a_minimal_agent_is_valid() -> None:
    validate_agent_spec(spec())


@pytest.mark.parametrize(
    ("broken", "field"),
    [
        (spec(display_name=""), "agent.display_name"),
        (spec(display_name="   "), "agent.display_name"),
        (spec(display_name="x" * 201), "agent.display_name"),
        (spec(description="x" * 2001), "agent.description"),
        (spec(model=ModelConfig(provider="gpt")), "agent.model.provider"),
        (spec(model=ModelConfig(temperature=2.5)), "agent.model.temperature"),
        (spec(model=ModelConfig(temperature=float("nan"))), "agent.model.temperature"),
        (spec(model=ModelConfig(max_output_tokens=0)), "agent.model.max_output_tokens"),
        (spec(model=ModelConfig(api_key=SecretRef(env="1BAD"))), "agent.model.api_key.env"),
        (
            spec(model=ModelConfig(api_key=SecretRef(file="../etc/passwd"))),
            "agent.model.api_key.file",
        ),
        (spec(model=ModelConfig(base_url="ftp://x")), "agent.model.base_url"),
        (spec(tools=["Bad Tool"]), "agent.tools[0]"),
        (spec(labels={"Team": "ml"}), "agent.labels"),
        (spec(labels={"team": "x" * 64}), "agent.labels"),
    ],
)
def test_each_broken_rule_names_its_field(broken: AgentSpec, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_agent_spec(broken)
    assert caught.value.field == field
    assert caught.value.message.startswith(field)
