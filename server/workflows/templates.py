"""Templates for agent inputs and tool arguments: `{{ expression }}` holes
filled in from the execution's data. No template language runs: each hole
is an expression of `aster.server.workflows.expressions`, nothing else.

    "Summarise this page: {{ steps.fetch.output.body }}"
    {"expression": "{{ input.a }} + 2", "n": "{{ steps.count.output.n }}"}

- A string that is exactly one hole (`"{{ steps.x.output }}"`) becomes the
  hole's value with its JSON type (a number stays a number, an object an
  object).
- Otherwise each hole is replaced by its value as text: strings as they are,
  null as the empty string, anything else as compact JSON.
- `{{` with no closing `}}` is an error; write a literal `{{` as
  `{{ "{{" }}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from aster.server.workflows.expressions import Expression, ExpressionError, compile_expression

_HOLE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
MAX_RENDERED = 1_000_000


class TemplateError(ExpressionError):
    """A template that does not parse, or whose hole fails to evaluate."""


@dataclass(frozen=True)
class Template:
    """A parsed template string: literal text and holes, alternating
    (`parts[0]` text, `parts[1]` hole, ...)."""

    text: str
    parts: tuple[str | Expression, ...]

    @property
    def step_refs(self) -> frozenset[str]:
        """Every step its holes read."""
        refs: set[str] = set()
        for part in self.parts:
            if isinstance(part, Expression):
                refs |= part.step_refs
        return frozenset(refs)

    def render(self, context: Mapping[str, Any]) -> Any:
        """The filled-in value (see the module docstring)."""
        if len(self.parts) == 3 and self.parts[0] == "" and self.parts[2] == "":
            hole = self.parts[1]
            assert isinstance(hole, Expression)
            return _evaluate(hole, context)
        pieces = []
        for part in self.parts:
            pieces.append(part if isinstance(part, str) else _text(_evaluate(part, context)))
        rendered = "".join(pieces)
        if len(rendered) > MAX_RENDERED:
            raise TemplateError(f"the template renders to more than {MAX_RENDERED} characters")
        return rendered


def _evaluate(expression: Expression, context: Mapping[str, Any]) -> Any:
    try:
        return expression.evaluate(context)
    except TemplateError:
        raise
    except ExpressionError as error:
        raise TemplateError(f"{{{{ {expression.text.strip()} }}}}: {error}") from None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def compile_template(text: str, known_steps: Collection[str] | None = None) -> Template:
    """Parses `text` and checks every hole (see `compile_expression`)."""
    parts: list[str | Expression] = []
    position = 0
    for match in _HOLE.finditer(text):
        literal = text[position : match.start()]
        _check_literal(literal, text)
        parts.append(literal)
        try:
            parts.append(compile_expression(match.group(1), known_steps))
        except ExpressionError as error:
            raise TemplateError(f"{{{{{match.group(1)}}}}}: {error}") from None
        position = match.end()
    tail = text[position:]
    _check_literal(tail, text)
    parts.append(tail)
    return Template(text=text, parts=tuple(parts))


def _check_literal(literal: str, text: str) -> None:
    if "{{" in literal:
        raise TemplateError(f"{text[:80]!r}: '{{{{' is not closed by '}}}}'")


def compile_value(value: Any, known_steps: Collection[str] | None = None) -> frozenset[str]:
    """Checks every string inside `value` (a JSON value) as a template and
    returns the steps they read."""
    refs: set[str] = set()
    for text in _strings(value):
        refs |= compile_template(text, known_steps).step_refs
    return frozenset(refs)


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """`value` (a JSON value, such as a tool step's arguments) with every
    string inside rendered as a template; keys are left as they are."""
    if isinstance(value, str):
        return compile_template(value).render(context) if "{{" in value else value
    if isinstance(value, Mapping):
        return {key: render_value(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, context) for item in value]
    return value


def render_text(text: str, context: Mapping[str, Any]) -> str:
    """`text` rendered, always as a string (an agent step's input)."""
    return _text(compile_template(text).render(context)) if "{{" in text else text


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []
