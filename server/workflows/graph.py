"""The shape of a workflow's steps: chains linked by `next`, composite steps
that own sub-chains (see the graph model in `aster.server.workflows.models`).

`build_graph` checks the structure (unique names, no dangling name, no cycle,
every step entered from exactly one place) and returns a `WorkflowGraph` to
walk it; the executions side uses `chain` and `sub_chains`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from aster.server.workflows.models import (
    ConditionStep,
    LoopStep,
    ParallelStep,
    Step,
)

# Step names are identifiers, so `steps.<name>` reads them in expressions.
STEP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
MAX_STEPS = 200


class GraphError(Exception):
    """A structural error: what is wrong (`message`), where (`field`, a path
    such as `steps[2].next`, relative to the workflow) and the step's name."""

    def __init__(self, message: str, field: str, step: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.step = step


@dataclass(frozen=True)
class Edge:
    """A name one step uses to enter another: where it is (`field`,
    relative to the step, e.g. `next` or `parallel.branches[1]`) and the
    target's name."""

    field: str
    target: str
    starts_sub_chain: bool


def edges(step: Step) -> list[Edge]:
    """Every step name `step` refers to, in field order (empty names left out)."""
    found: list[Edge] = []
    action = step.action
    if isinstance(action, ParallelStep):
        found += [
            Edge(f"parallel.branches[{i}]", name, True) for i, name in enumerate(action.branches)
        ]
    elif isinstance(action, ConditionStep):
        found += [
            Edge(f"condition.{field}", name, True)
            for field, name in (("then_step", action.then_step), ("else_step", action.else_step))
            if name
        ]
    elif isinstance(action, LoopStep):
        found.append(Edge("loop.body", action.body, True))
    if step.next:
        found.append(Edge("next", step.next, False))
    return found


@dataclass(frozen=True)
class WorkflowGraph:
    """A checked step structure."""

    steps: dict[str, Step]
    # The composite step that owns the chain each step is on (None: the main chain).
    owner: dict[str, str | None]

    @property
    def entry(self) -> str:
        """The first step of the main chain."""
        return next(iter(self.steps))

    def chain(self, start: str) -> list[Step]:
        """The chain that starts at `start`: it, its `next`, and so on."""
        result = []
        name = start
        while name:
            step = self.steps[name]
            result.append(step)
            name = step.next
        return result

    def main_chain(self) -> list[Step]:
        """The steps an execution runs one after another at the top level."""
        return self.chain(self.entry)

    def sub_chains(self, step: Step) -> list[str]:
        """The first step of each sub-chain `step` owns: a parallel step's
        branches, a condition's arms (then, else; empty names left out), a
        loop's body."""
        return [edge.target for edge in edges(step) if edge.starts_sub_chain]


def build_graph(steps: Sequence[Step]) -> WorkflowGraph:
    """Checks the structure of `steps`; GraphError names the first problem."""
    if not steps:
        raise GraphError("a workflow needs at least one step", "steps", "")
    if len(steps) > MAX_STEPS:
        raise GraphError(f"a workflow has at most {MAX_STEPS} steps", "steps", "")
    index: dict[str, int] = {}
    for i, step in enumerate(steps):
        if not STEP_NAME.match(step.name):
            raise GraphError(
                f"{step.name[:80]!r} is not a step name: use letters, digits "
                "and '_', starting with a letter or '_', at most 63 characters",
                f"steps[{i}].name",
                step.name,
            )
        if step.name in index:
            raise GraphError(
                f"{step.name!r} is also the name of steps[{index[step.name]}]",
                f"steps[{i}].name",
                step.name,
            )
        index[step.name] = i
    by_name = {step.name: step for step in steps}
    # Dangling names, and steps entered from more than one place.
    entered_from: dict[str, str] = {}
    for i, step in enumerate(steps):
        seen_here: set[str] = set()
        for edge in edges(step):
            field = f"steps[{i}].{edge.field}"
            if edge.target not in by_name:
                raise GraphError(
                    f"names step {edge.target[:80]!r}, which does not exist",
                    field,
                    step.name,
                )
            if edge.target == step.name:
                raise GraphError(
                    "names the step itself, making a cycle "
                    "outside a loop; repeat steps with a loop step",
                    field,
                    step.name,
                )
            if edge.target in seen_here:
                raise GraphError(
                    f"names step {edge.target!r} twice",
                    field,
                    step.name,
                )
            seen_here.add(edge.target)
    _check_cycles(steps, by_name, index)
    for i, step in enumerate(steps):
        for edge in edges(step):
            field = f"steps[{i}].{edge.field}"
            if edge.target == steps[0].name:
                raise GraphError(
                    f"names step {edge.target!r}, the first "
                    "step, which starts the workflow and cannot be entered from elsewhere",
                    field,
                    step.name,
                )
            if edge.target in entered_from:
                raise GraphError(
                    f"names step {edge.target!r}, which is "
                    f"already entered from {entered_from[edge.target]}; a step is entered from "
                    "one place only (end a branch with an empty next and let the parallel, "
                    "condition or loop step's next continue)",
                    field,
                    step.name,
                )
            entered_from[edge.target] = f"step {step.name!r} ({edge.field})"
    owner = _owners(steps[0].name, by_name)
    for i, step in enumerate(steps):
        if step.name not in owner:
            raise GraphError(
                "the step is never reached: no next, branch, arm or loop body "
                "names it, and it is not the first step",
                f"steps[{i}]",
                step.name,
            )
    return WorkflowGraph(steps=by_name, owner=owner)


def _check_cycles(steps: Sequence[Step], by_name: dict[str, Step], index: dict[str, int]) -> None:
    """GraphError naming the step whose name closes a cycle."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        step = by_name[name]
        for edge in edges(step):
            if state.get(edge.target) == 1:
                loop = " -> ".join([*path[path.index(edge.target) :], name, edge.target])
                raise GraphError(
                    f"leads back to step {edge.target!r}, making a "
                    f"cycle outside a loop ({loop}); repeat steps with a loop step",
                    f"steps[{index[name]}].{edge.field}",
                    name,
                )
            if edge.target not in state:
                visit(edge.target, [*path, name])
        state[name] = 2

    for step in steps:
        if step.name not in state:
            visit(step.name, [])


def _owners(entry: str, by_name: dict[str, Step]) -> dict[str, str | None]:
    """The owner of each step reachable from `entry` (see WorkflowGraph)."""
    owner: dict[str, str | None] = {}
    pending: list[tuple[str, str | None]] = [(entry, None)]
    while pending:
        start, chain_owner = pending.pop()
        name = start
        while name and name not in owner:
            owner[name] = chain_owner
            step = by_name[name]
            pending += [(edge.target, name) for edge in edges(step) if edge.starts_sub_chain]
            name = step.next
    return owner
