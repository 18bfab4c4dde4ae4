"""Expressions and templates: what they compute, what they refuse, and the
errors they give at compile time and at run time."""

from __future__ import annotations

from typing import Any

import pytest

from aster.server.workflows.expressions import ExpressionError, compile_expression
from aster.server.workflows.templates import (
    TemplateError,
    compile_template,
    compile_value,
    render_text,
    render_value,
)

CONTEXT: dict[str, Any] = {
    "input": {"priority": 3, "name": "Ada", "tags": ["a", "b"], "strict": False},
    "steps": {
        "classify": {"output": {"label": "urgent", "score": 0.9}},
        "fetch": {"output": {"body": "an error occurred", "items": [{"n": 1}, {"n": 2}]}},
    },
}
STEPS = {"classify", "fetch", "later"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('steps.classify.output.label == "urgent"', True),
        ('steps.classify.output.label == "urgent" and input.priority > 2', True),
        ("steps.classify.output.score >= 0.95 or input.strict", False),
        ('"error" in steps.fetch.output.body', True),
        ('steps["fetch"].output["items"][1].n + 1', 3),
        ("len(input.tags) == 2 and not input.strict", True),
        ("input.priority * 2 if input.priority > 1 else 0", 6),
        ("lower(input.name) + '!'", "ada!"),
        ("[input.priority, null, true]", [3, None, True]),
        ("{'k': input.priority}", {"k": 3}),
        ("max(1, input.priority, 2) - min(4, 5) // 2 % 3", 1),
        ("1 < input.priority < 5", True),
        ("input.strict and input.no_such_key", False),
    ],
)
def test_expressions_evaluate(text: str, value: Any) -> None:
    expression = compile_expression(text, STEPS)
    assert expression.evaluate(CONTEXT) == value


def test_step_references_are_collected() -> None:
    expression = compile_expression('steps.classify.output.x == steps["fetch"].output', STEPS)
    assert expression.step_refs == {"classify", "fetch"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        ("1 +", "does not parse"),
        ("__import__('os').system('true')", "only these functions"),
        ("open('/etc/passwd')", "only these functions"),
        ("input.__class__", "__class__"),
        ("input.name.upper()", "only these functions"),
        ("steps", "by its name"),
        ("steps[input.name]", "by its name"),
        ("steps.ghost.output", "'ghost', which does not exist"),
        ("x + 1", "unknown name 'x'"),
        ("lambda: 1", "Lambda"),
        ("[x for x in input.tags]", "ListComp"),
        ("input.tags[0:1]", "slices"),
        ("2 ** 1000", "Pow"),
        ("input is None", "'is'"),
        ("len(*input.tags)", "unpacking"),
        ("int(x=1)", "positional"),
        ("(a := 1)", "NamedExpr"),
        ("x" * 3000, "longer than"),
    ],
)
def test_expressions_refuse_what_is_outside_the_language(text: str, words: str) -> None:
    with pytest.raises(ExpressionError, match=None) as caught:
        compile_expression(text, STEPS)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("steps.later.output", "step 'later' has not completed"),
        ("input.nope", "no key 'nope'"),
        ("input.tags[5]", "out of range"),
        ("input.priority.x", "cannot read 'x' of a int"),
        ("input.priority / 0", "division by zero"),
        ("input.name * 3", "* needs two numbers"),
        ("-input.name", "- needs a number"),
        ("input.name < 1", "not supported"),
        ("int(input.name)", "invalid literal"),
    ],
)
def test_run_time_errors_say_what_went_wrong(text: str, words: str) -> None:
    expression = compile_expression(text, STEPS)
    with pytest.raises(ExpressionError) as caught:
        expression.evaluate(CONTEXT)
    assert words in str(caught.value)


def test_huge_numbers_and_strings_are_refused() -> None:
    big = compile_expression("input.n * input.n * input.n * input.n")
    with pytest.raises(ExpressionError, match="too large"):
        big.evaluate({"input": {"n": 2**1500}})
    long = compile_expression("input.s + input.s")
    with pytest.raises(ExpressionError, match="longer than"):
        long.evaluate({"input": {"s": "x" * 60_000}})


def test_a_template_that_is_one_hole_keeps_the_json_type() -> None:
    assert compile_template("{{ input.priority }}").render(CONTEXT) == 3
    assert compile_template("{{ steps.classify.output }}").render(CONTEXT) == {
        "label": "urgent",
        "score": 0.9,
    }
    assert compile_template("{{input.tags}}").render(CONTEXT) == ["a", "b"]


def test_templates_interpolate_text() -> None:
    text = "Hi {{ input.name }}, {{ steps.classify.output.label }} ({{ input.tags }}) {{ null }}."
    assert render_text(text, CONTEXT) == 'Hi Ada, urgent (["a","b"]) .'
    assert render_text("no holes {not one}", CONTEXT) == "no holes {not one}"
    assert render_text("{{ input.priority }}", CONTEXT) == "3"
    assert render_text('literal {{ "{{" }} braces', CONTEXT) == "literal {{ braces"


def test_values_render_every_string_inside() -> None:
    arguments = {
        "expression": "{{ input.priority }} * 2",
        "n": "{{ input.priority }}",
        "nested": [{"who": "{{ input.name }}"}, 7, None],
    }
    assert render_value(arguments, CONTEXT) == {
        "expression": "3 * 2",
        "n": 3,
        "nested": [{"who": "Ada"}, 7, None],
    }
    assert compile_value(arguments, STEPS) == frozenset()
    assert compile_value({"a": ["{{ steps.fetch.output }}"]}, STEPS) == {"fetch"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Hi {{ input.name ", "not closed"),
        ("{{ }}", "empty"),
        ("{{ steps.ghost.output }}", "'ghost'"),
        ("a {{ 1 + }} b", "does not parse"),
    ],
)
def test_bad_templates_are_refused(text: str, words: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(text, STEPS)
    assert words in str(caught.value)


def test_a_hole_that_fails_at_run_time_names_itself() -> None:
    with pytest.raises(TemplateError, match=r"\{\{ steps.later.output \}\}: .*not completed"):
        render_text("x {{ steps.later.output }}", CONTEXT)
