"""Safe expressions over a workflow execution's data, with no Python `eval`.

An expression is a small subset of Python syntax, parsed with `ast` and
walked by a closed interpreter (only the node types below exist):

    steps.classify.output.label == "urgent" and input.priority > 2
    len(steps.search.output.results) == 0 or not input.strict
    "error" in steps.fetch.output.body
    steps.count.output.n * 2 if input.double else steps.count.output.n

- Names: `input` (the execution's input), `steps` (`steps.<name>.output`,
  a completed step's output), `true`/`false`/`null` (and Python's
  `True`/`False`/`None`).
- `a.b` and `a["b"]` read a key of an object; `a[0]` an item of a list.
  There is no attribute of any Python object: `.b` only ever reads a key.
- Operators: `and or not`, `== != < <= > >= in not in`, `+ - * / // %`,
  unary `-`/`+`, `x if c else y`, list `[...]` and object `{...}` literals.
- Functions: len, str, int, float, bool, abs, min, max, round, lower, upper.

`compile_expression` checks syntax, names and step references once (at
Create/Update); `Expression.evaluate` runs it against a context. Both raise
ExpressionError with a message fit for the caller.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

MAX_EXPRESSION_LENGTH = 2_000
MAX_DEPTH = 32
# The longest string or list one operation may build.
MAX_SIZE = 100_000

_CONSTANTS: dict[str, Any] = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}
ROOTS = frozenset({"input", "steps"})


class ExpressionError(Exception):
    """An expression that does not parse, is not allowed, or fails."""


def _lower(value: Any) -> str:
    return str(value).lower()


def _upper(value: Any) -> str:
    return str(value).upper()


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
    "lower": _lower,
    "upper": _upper,
}

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_BINARY_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


@dataclass(frozen=True)
class Expression:
    """A checked expression: its text, its tree and the steps it reads."""

    text: str
    tree: ast.expr
    step_refs: frozenset[str]

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """The value of the expression; `context` maps `input` and `steps`
        (`{"<name>": {"output": ...}}` for each completed step).
        ExpressionError says what went wrong."""
        try:
            return _Evaluator(context).eval(self.tree)
        except ExpressionError:
            raise
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError) as error:
            raise ExpressionError(f"{self.text!r}: {error}") from None

    def test(self, context: Mapping[str, Any]) -> bool:
        """The expression's value as a boolean (Python truthiness)."""
        return bool(self.evaluate(context))


def compile_expression(text: str, known_steps: Collection[str] | None = None) -> Expression:
    """Parses and checks `text`. With `known_steps`, a `steps.<name>` that is
    not among them is an error (a dangling reference)."""
    if not text.strip():
        raise ExpressionError("the expression is empty")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        raise ExpressionError(f"{text!r} does not parse: {error.msg}") from None
    refs: set[str] = set()
    _check(tree, refs, 0)
    if known_steps is not None:
        for name in sorted(refs):
            if name not in known_steps:
                raise ExpressionError(f"{text!r} refers to step {name!r}, which does not exist")
    return Expression(text=text, tree=tree, step_refs=frozenset(refs))


def _step_ref(node: ast.expr) -> str | None:
    """The step name in `steps.<name>` / `steps["<name>"]`, else None."""
    if isinstance(node, ast.Attribute) and _is_name(node.value, "steps"):
        return node.attr
    if (
        isinstance(node, ast.Subscript)
        and _is_name(node.value, "steps")
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, str)
    ):
        return node.slice.value
    return None


def _is_name(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _check(node: ast.expr, refs: set[str], depth: int) -> None:
    """Raises ExpressionError for anything outside the language."""
    if depth > MAX_DEPTH:
        raise ExpressionError(f"the expression nests deeper than {MAX_DEPTH} levels")
    ref = _step_ref(node)
    if ref is not None:
        refs.add(ref)
        return
    children: list[ast.expr]
    match node:
        case ast.Constant(value=value):
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise ExpressionError(f"constant {value!r} is not allowed")
            return
        case ast.Name(id=name):
            if name == "steps":
                raise ExpressionError("refer to a step by its name: steps.<name>.output")
            if name not in ROOTS and name not in _CONSTANTS:
                raise ExpressionError(
                    f"unknown name {name!r}; use input, steps.<name>, true, false or null"
                )
            return
        case ast.Attribute(value=value, attr=attr):
            if attr.startswith("_"):
                raise ExpressionError(f"key {attr!r} cannot be read as .{attr}; use [{attr!r}]")
            children = [value]
        case ast.Subscript(value=value, slice=index):
            if isinstance(index, ast.Slice):
                raise ExpressionError("slices are not supported")
            children = [value, index]
        case ast.BoolOp(values=values):
            children = list(values)
        case ast.UnaryOp(op=op, operand=operand):
            if not isinstance(op, (ast.Not, ast.USub, ast.UAdd)):
                raise ExpressionError("only not, - and + are unary operators")
            children = [operand]
        case ast.BinOp(op=op, left=left, right=right):
            if type(op) not in _BINARY:
                raise ExpressionError(f"operator {type(op).__name__} is not supported")
            children = [left, right]
        case ast.Compare(left=left, comparators=comparators, ops=ops):
            if any(type(op) not in _COMPARE for op in ops):
                raise ExpressionError("'is' is not supported; use == and !=")
            children = [left, *comparators]
        case ast.IfExp(test=test, body=body, orelse=orelse):
            children = [test, body, orelse]
        case ast.List(elts=elts) | ast.Tuple(elts=elts):
            children = list(elts)
        case ast.Dict(keys=keys, values=values):
            if any(key is None for key in keys):
                raise ExpressionError("** in object literals is not supported")
            children = [k for k in keys if k is not None] + list(values)
        case ast.Call(func=func, args=args, keywords=keywords):
            if not isinstance(func, ast.Name) or func.id not in FUNCTIONS:
                raise ExpressionError(
                    f"only these functions may be called: {', '.join(sorted(FUNCTIONS))}"
                )
            if keywords:
                raise ExpressionError("functions take positional arguments only")
            children = list(args)
        case _:
            raise ExpressionError(f"{type(node).__name__} is not allowed in an expression")
    for child in children:
        if isinstance(child, ast.Starred):
            raise ExpressionError("* unpacking is not supported")
        _check(child, refs, depth + 1)


class _Evaluator:
    """Walks a checked tree; only the node types `_check` lets through."""

    def __init__(self, context: Mapping[str, Any]) -> None:
        self._context = context

    def eval(self, node: ast.expr) -> Any:
        match node:
            case ast.Constant(value=value):
                return value
            case ast.Name(id=name):
                if name in _CONSTANTS:
                    return _CONSTANTS[name]
                return self._context.get(name, {} if name == "input" else None)
            case ast.Attribute(value=value, attr=attr):
                return self._key(self.eval(value), attr, node)
            case ast.Subscript(value=value, slice=index):
                return self._key(self.eval(value), self.eval(index), node)
            case ast.BoolOp(op=ast.And(), values=values):
                result: Any = True
                for item in values:
                    result = self.eval(item)
                    if not result:
                        return result
                return result
            case ast.BoolOp(values=values):
                result = False
                for item in values:
                    result = self.eval(item)
                    if result:
                        return result
                return result
            case ast.UnaryOp(op=ast.Not(), operand=operand):
                return not self.eval(operand)
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                return -_number(self.eval(operand), "-")
            case ast.UnaryOp(operand=operand):
                return +_number(self.eval(operand), "+")
            case ast.BinOp(op=op, left=left, right=right):
                return _binary(op, self.eval(left), self.eval(right))
            case ast.Compare(left=left, ops=ops, comparators=comparators):
                current = self.eval(left)
                for compare, right_node in zip(ops, comparators, strict=True):
                    right = self.eval(right_node)
                    if not _COMPARE[type(compare)](current, right):
                        return False
                    current = right
                return True
            case ast.IfExp(test=test, body=body, orelse=orelse):
                return self.eval(body) if self.eval(test) else self.eval(orelse)
            case ast.List(elts=elts) | ast.Tuple(elts=elts):
                return [self.eval(e) for e in elts]
            case ast.Dict(keys=keys, values=values):
                return {self.eval(k): self.eval(v) for k, v in zip(keys, values, strict=True) if k}
            case ast.Call(func=ast.Name(id=name), args=args):
                return _limit(FUNCTIONS[name](*[self.eval(a) for a in args]))
        raise ExpressionError(f"{type(node).__name__} is not allowed in an expression")

    def _key(self, container: Any, key: Any, node: ast.expr) -> Any:
        path = ast.unparse(node)
        if isinstance(container, Mapping):
            if key in container:
                return container[key]
            ref = _step_ref(node)
            if ref is not None:
                raise ExpressionError(f"{path}: step {ref!r} has not completed")
            raise ExpressionError(f"{path}: no key {key!r}")
        if isinstance(container, list) and isinstance(key, int) and not isinstance(key, bool):
            if -len(container) <= key < len(container):
                return container[key]
            raise ExpressionError(f"{path}: index {key} is out of range")
        raise ExpressionError(f"{path}: cannot read {key!r} of {_type_name(container)}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _number(value: Any, symbol: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExpressionError(f"{symbol} needs a number, not {_type_name(value)}")
    return value


def _binary(op: ast.operator, left: Any, right: Any) -> Any:
    if isinstance(op, ast.Mult) and not (
        isinstance(left, (int, float)) and isinstance(right, (int, float))
    ):
        raise ExpressionError("* needs two numbers")
    if (
        isinstance(op, ast.Add)
        and isinstance(left, (str, list))
        and len(left) + len(right if isinstance(right, (str, list)) else "") > MAX_SIZE
    ):
        raise ExpressionError(f"+ would build a value longer than {MAX_SIZE}")
    result = _BINARY[type(op)](left, right)
    if isinstance(result, float) and not math.isfinite(result):
        raise ExpressionError(f"{_BINARY_SYMBOLS.get(type(op), 'the operator')} overflowed")
    return _limit(result)


def _limit(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4096:
        raise ExpressionError("the number is too large")
    return value
