"""Static checks of workflow definitions: every class of bad definition,
one table row each, gives INVALID_ARGUMENT naming the field and the step."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from google.protobuf import json_format

from aster.server.errors import InvalidArgument
from aster.server.workflows.mapping import spec_from_proto
from aster.server.workflows.validation import validate_workflow_spec
from aster.v1 import workflow_pb2

GOOD: dict[str, Any] = {
    "display_name": "Triage",
    "steps": [
        {
            "name": "classify",
            "next": "fanout",
            "agent": {"agent_id": "clf", "input": "{{ input.text }}"},
        },
        {
            "name": "fanout",
            "next": "route",
            "parallel": {"branches": ["a", "b"], "join": "PARALLEL_JOIN_ALL"},
        },
        {
            "name": "a",
            "tool": {"tool_id": "calculator", "arguments": {"expression": "1 + {{ input.n }}"}},
        },
        {"name": "b", "wait": "0.5s"},
        {
            "name": "route",
            "next": "repeat",
            "condition": {
                "expression": 'steps.classify.output.text == "urgent"',
                "then_step": "page",
                "else_step": "",
            },
        },
        {"name": "page", "approval": {"prompt": "Page someone?"}},
        {
            "name": "repeat",
            "next": "done",
            "loop": {"body": "tick", "until": "steps.tick.output.n > 3", "max_iterations": 5},
        },
        {
            "name": "tick",
            "tool": {"tool_id": "get_time"},
            "retry": {
                "max_attempts": 3,
                "initial_backoff": "1s",
                "backoff_multiplier": 2,
                "max_backoff": "10s",
            },
            "timeout": "30s",
        },
        {"name": "done", "approval": {}},
    ],
    "schedules": [{"id": "nightly", "cron": "0 3 * * *", "time_zone": "Europe/Paris"}],
}


def _spec(data: dict[str, Any]) -> Any:
    message = workflow_pb2.Workflow()
    json_format.ParseDict(data, message)
    return spec_from_proto(message)


def _with(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    change(data)
    return data


def _step(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in data["steps"] if s["name"] == name)


def test_the_good_definition_passes_and_lists_what_to_look_up() -> None:
    checked = validate_workflow_spec(_spec(GOOD))
    assert [r.id for r in checked.agents] == ["clf"]
    assert [r.id for r in checked.tools] == ["calculator", "get_time"]
    assert checked.tools[0].field == "workflow.steps[2].tool.tool_id"
    assert [s.name for s in checked.graph.main_chain()] == [
        "classify",
        "fanout",
        "route",
        "repeat",
        "done",
    ]
    assert checked.graph.sub_chains(checked.graph.steps["fanout"]) == ["a", "b"]
    assert checked.graph.owner["tick"] == "repeat" and checked.graph.owner["classify"] is None


def _set(path: str, value: Any) -> Any:
    """A change that sets `steps[name].a.b` (by step name) or a top-level key."""

    def change(data: dict[str, Any]) -> None:
        if path.startswith("@"):
            name, _, rest = path[1:].partition(".")
            target: Any = _step(data, name)
        else:
            target, rest = data, path
        *parents, leaf = rest.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        if value is _DELETE:
            del target[leaf]
        else:
            target[leaf] = value

    return change


_DELETE = object()

CASES = [
    # (case, change, field, step, words in the message)
    ("no display name", _set("display_name", ""), "workflow.display_name", "", "empty"),
    ("no steps", _set("steps", []), "workflow.steps", "", "at least one step"),
    ("no kind", _set("@b.wait", _DELETE), "workflow.steps[3]", "b", "exactly one kind"),
    (
        "bad step name",
        _set("@done.name", "not-ok"),
        "workflow.steps[8].name",
        "not-ok",
        "step name",
    ),
    (
        "duplicate name",
        _set("@done.name", "tick"),
        "workflow.steps[8].name",
        "tick",
        "also the name",
    ),
    (
        "dangling next",
        _set("@done.next", "nowhere"),
        "workflow.steps[8].next",
        "done",
        "does not exist",
    ),
    (
        "dangling branch",
        _set("@fanout.parallel.branches", ["a", "zz"]),
        "workflow.steps[1].parallel.branches[1]",
        "fanout",
        "does not exist",
    ),
    (
        "dangling arm",
        _set("@route.condition.else_step", "zz"),
        "workflow.steps[4].condition.else_step",
        "route",
        "does not exist",
    ),
    (
        "dangling loop body",
        _set("@repeat.loop.body", "zz"),
        "workflow.steps[6].loop.body",
        "repeat",
        "does not exist",
    ),
    (
        "cycle through next",
        _set("@tick.next", "repeat"),
        "workflow.steps[7].next",
        "tick",
        "cycle outside a loop",
    ),
    (
        "cycle to itself",
        _set("@done.next", "done"),
        "workflow.steps[8].next",
        "done",
        "cycle outside a loop",
    ),
    (
        "cycle via a condition arm",
        _set("@page.next", "route"),
        "workflow.steps[5].next",
        "page",
        "cycle outside a loop",
    ),
    ("entered twice", _set("@a.next", "b"), "workflow.steps[2].next", "a", "already entered"),
    (
        "back to the first step",
        _set("@done.next", "classify"),
        "workflow.steps[8].next",
        "done",
        "cycle",
    ),
    (
        "unreachable",
        _set("@route.condition.then_step", ""),
        "workflow.steps[5]",
        "page",
        "never reached",
    ),
    (
        "bad expression syntax",
        _set("@route.condition.expression", "steps.classify.output ==="),
        "workflow.steps[4].condition.expression",
        "route",
        "does not parse",
    ),
    (
        "expression calls python",
        _set("@route.condition.expression", "__import__('os')"),
        "workflow.steps[4].condition.expression",
        "route",
        "functions",
    ),
    (
        "expression reads a dunder",
        _set("@route.condition.expression", "input.__class__"),
        "workflow.steps[4].condition.expression",
        "route",
        "__class__",
    ),
    (
        "expression names an unknown step",
        _set("@route.condition.expression", "steps.ghost.output"),
        "workflow.steps[4].condition.expression",
        "route",
        "'ghost', which does not exist",
    ),
    (
        "expression reads the step itself",
        _set("@route.condition.expression", "steps.route.output"),
        "workflow.steps[4].condition.expression",
        "route",
        "itself",
    ),
    (
        "empty expression",
        _set("@route.condition.expression", " "),
        "workflow.steps[4].condition.expression",
        "route",
        "required",
    ),
    (
        "bad until",
        _set("@repeat.loop.until", "steps.tick.output >"),
        "workflow.steps[6].loop.until",
        "repeat",
        "does not parse",
    ),
    (
        "bad template",
        _set("@classify.agent.input", "Hi {{ input.name "),
        "workflow.steps[0].agent.input",
        "classify",
        "not closed",
    ),
    (
        "template names an unknown step",
        _set("@a.tool.arguments", {"expression": "{{ steps.nope.output }}"}),
        "workflow.steps[2].tool.arguments",
        "a",
        "'nope'",
    ),
    (
        "template hole is no expression",
        _set("@classify.agent.input", "{{ import os }}"),
        "workflow.steps[0].agent.input",
        "classify",
        "does not parse",
    ),
    (
        "no agent id",
        _set("@classify.agent.agent_id", ""),
        "workflow.steps[0].agent.agent_id",
        "classify",
        "name the agent",
    ),
    (
        "malformed tool id",
        _set("@a.tool.tool_id", "Bad Tool"),
        "workflow.steps[2].tool.tool_id",
        "a",
        "well-formed tool id",
    ),
    (
        "no branches",
        _set("@fanout.parallel.branches", []),
        "workflow.steps[2]",
        "a",
        "never reached",
    ),
    (
        "negative max_attempts",
        _set("@tick.retry.max_attempts", -1),
        "workflow.steps[7].retry.max_attempts",
        "tick",
        "between 0",
    ),
    (
        "too many attempts",
        _set("@tick.retry.max_attempts", 1000),
        "workflow.steps[7].retry.max_attempts",
        "tick",
        "between 0",
    ),
    (
        "negative backoff",
        _set("@tick.retry.initial_backoff", "-1s"),
        "workflow.steps[7].retry.initial_backoff",
        "tick",
        "negative",
    ),
    (
        "multiplier below 1",
        _set("@tick.retry.backoff_multiplier", 0.5),
        "workflow.steps[7].retry.backoff_multiplier",
        "tick",
        "between 1",
    ),
    (
        "max_backoff below initial",
        _set("@tick.retry.max_backoff", "0.5s"),
        "workflow.steps[7].retry.max_backoff",
        "tick",
        "shorter",
    ),
    (
        "negative timeout",
        _set("@tick.timeout", "-3s"),
        "workflow.steps[7].timeout",
        "tick",
        "negative",
    ),
    (
        "retry on a parallel step",
        _set("@fanout.retry", {"max_attempts": 2}),
        "workflow.steps[1].retry",
        "fanout",
        "retry applies to agent and tool steps only, not to a parallel step",
    ),
    (
        "retry on a condition step",
        _set("@route.retry", {"max_attempts": 3}),
        "workflow.steps[4].retry",
        "route",
        "not to a condition step: a composite step is not run again as a whole",
    ),
    (
        "retry on a loop step",
        _set("@repeat.retry", {"initial_backoff": "1s"}),
        "workflow.steps[6].retry",
        "repeat",
        "not to a loop step",
    ),
    (
        "retry on an approval",
        _set("@page.retry", {"max_attempts": 2}),
        "workflow.steps[5].retry",
        "page",
        "not to an approval step: an approval is decided once",
    ),
    (
        "retry on a wait",
        _set("@b.retry", {"max_attempts": 2}),
        "workflow.steps[3].retry",
        "b",
        "a wait step cannot fail",
    ),
    (
        "timeout on a wait",
        _set("@b.timeout", "1s"),
        "workflow.steps[3].timeout",
        "b",
        "a wait step takes no timeout",
    ),
    (
        "negative timeout on a loop",
        _set("@repeat.timeout", "-1s"),
        "workflow.steps[6].timeout",
        "repeat",
        "negative",
    ),
    (
        "approval timeout over a year",
        _set("@page.timeout", "40000000s"),
        "workflow.steps[5].timeout",
        "page",
        "365 days",
    ),
    ("negative wait", _set("@b.wait", "-1s"), "workflow.steps[3].wait", "b", "negative"),
    ("wait over a year", _set("@b.wait", "40000000s"), "workflow.steps[3].wait", "b", "365 days"),
    (
        "negative max_iterations",
        _set("@repeat.loop.max_iterations", -2),
        "workflow.steps[6].loop.max_iterations",
        "repeat",
        "between 0",
    ),
    (
        "bad cron",
        _set("schedules", [{"cron": "every day"}]),
        "workflow.schedules[0].cron",
        "",
        "cron",
    ),
    (
        "seven cron fields",
        _set("schedules", [{"cron": "* * * * * * *"}]),
        "workflow.schedules[0].cron",
        "",
        "six",
    ),
    (
        "unknown zone",
        _set("schedules", [{"cron": "* * * * *", "time_zone": "Mars/Olympus"}]),
        "workflow.schedules[0].time_zone",
        "",
        "IANA",
    ),
    (
        "end before start",
        _set(
            "schedules",
            [
                {
                    "cron": "* * * * *",
                    "start_time": "2030-01-02T00:00:00Z",
                    "end_time": "2030-01-01T00:00:00Z",
                }
            ],
        ),
        "workflow.schedules[0].end_time",
        "",
        "before start_time",
    ),
    (
        "duplicate schedule id",
        _set("schedules", [{"id": "s", "cron": "* * * * *"}, {"id": "s", "cron": "0 * * * *"}]),
        "workflow.schedules[1].id",
        "",
        "also schedules[0]",
    ),
    ("bad labels", _set("labels", {"Bad Key": "x"}), "workflow.labels", "", "key"),
]


@pytest.mark.parametrize(
    ("change", "field", "step", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_bad_definition_names_the_field_and_the_step(
    change: Any, field: str, step: str, words: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_workflow_spec(_spec(_with(change)))
    error = caught.value
    assert error.field == field, error.message
    assert error.metadata.get("step", "") == step, error.message
    assert words in error.message, error.message
    assert error.message.startswith(field), error.message


def test_a_cycle_message_shows_the_path() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_workflow_spec(_spec(_with(_set("@tick.next", "repeat"))))
    assert "repeat -> tick -> repeat" in caught.value.message


def test_timeouts_on_composite_and_approval_steps_and_no_op_retries_pass() -> None:
    def change(data: dict[str, Any]) -> None:
        for name in ("fanout", "route", "repeat", "page"):
            _step(data, name)["timeout"] = "90s"
        # A policy of one attempt is no retry at all: every kind accepts it.
        for name in ("fanout", "b", "done"):
            _step(data, name)["retry"] = {"max_attempts": 1}

    spec = _spec(_with(change))
    validate_workflow_spec(spec)
    assert {s.name for s in spec.steps if s.timeout} == {
        "fanout",
        "route",
        "repeat",
        "page",
        "tick",
    }
