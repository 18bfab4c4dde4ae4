"""Runs the examples of README.md and docs/*.md against the real server and Envoy.

The convention, in the Markdown source:

* A fenced block with the info string ``sh`` or ``python`` whose previous
  non-blank line is ``<!-- example -->`` is executed. ``<!-- example fails -->``
  expects a non-zero exit status instead of 0. Other blocks are not run.
* The next fenced block after an example, if its previous non-blank line is
  ``<!-- output -->``, is the example's expected output (prose may come in
  between). Every example has one.

  - A ``json`` output block holds one or more JSON documents. The example's
    stdout must be exactly as many JSON documents, each matching its
    counterpart: objects match if every expected key matches (other keys are
    ignored), lists if the expected items match a subsequence of the actual
    ones (``[]`` matches only an empty list), strings if equal where ``...``
    stands for any text (``"..."`` alone matches any value), numbers, booleans
    and null if equal.
  - A ``text`` output block: every non-blank line, with ``...`` standing for
    any text, must equal (ignoring surrounding blanks) a line of the output,
    in order; other output lines are skipped, and a line that is just ``...``
    only marks that. The output is stdout, followed by stderr for examples
    marked ``fails``.

* Before running, ``localhost:50051`` becomes the stack's gRPC address and
  ``localhost:8080`` its REST address. Shell blocks run under
  ``bash -euo pipefail`` with the venv's bin directory first on PATH, so
  ``grpcurl`` (and ``python3``) are the venv's; Python blocks run with
  ``sys.executable``. Examples share the session's database with other tests,
  so they create what they need and never assume it is empty.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
TIMEOUT_S = 60

EXAMPLE_MARKER = re.compile(r"^<!--\s*example(?P<fails>\s+fails)?\s*-->$")
OUTPUT_MARKER = re.compile(r"^<!--\s*output\s*-->$")
ANY_MARKER = re.compile(r"^<!--\s*(?:example|output).*-->$")
FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
RUNNABLE = {"sh", "python"}
OUTPUT_KINDS = {"json", "text"}
ELLIPSIS = "..."
# Default ports of a developer's own `aster up`; examples must never reach them.
DEFAULT_ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1|0\.0\.0\.0):(?:50051|8080|9464|9901)\b")


@dataclass(frozen=True)
class Block:
    """A fenced block and the marker comment in front of it."""

    path: Path
    line: int  # 1-based line of the opening fence
    info: str
    body: str
    marker: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


@dataclass(frozen=True)
class Example:
    """A runnable block and its expected output."""

    block: Block
    fails: bool
    output: Block | None


def parse_blocks(path: Path) -> list[Block]:
    """Every fenced block of `path`, with the line before it if it is a marker."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    previous = ""
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index].strip())
        if opening is None:
            if lines[index].strip():
                previous = lines[index].strip()
            index += 1
            continue
        fence = opening["fence"]
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and not (
            lines[index].strip().startswith(fence[0] * len(fence))
            and not lines[index].strip().strip(fence[0])
        ):
            body.append(lines[index])
            index += 1
        if index == len(lines):
            raise AssertionError(f"{path}:{start + 1}: unclosed code block")
        marker = previous if ANY_MARKER.match(previous) else ""
        blocks.append(Block(path, start + 1, opening["info"], "\n".join(body) + "\n", marker))
        previous = ""
        index += 1
    return blocks


def collect_examples(paths: list[Path]) -> list[Example]:
    """The examples of `paths`, each with its output block."""
    examples: list[Example] = []
    for path in paths:
        blocks = parse_blocks(path)
        for position, block in enumerate(blocks):
            found = EXAMPLE_MARKER.match(block.marker)
            if found is None:
                continue
            following = blocks[position + 1] if position + 1 < len(blocks) else None
            output = following if following and OUTPUT_MARKER.match(following.marker) else None
            examples.append(Example(block, bool(found["fails"]), output))
    return examples


EXAMPLES = collect_examples([p for p in DOC_FILES if p.exists()])


# Matching -------------------------------------------------------------------


def text_matches(pattern: str, actual: str) -> bool:
    """Whether `actual` equals `pattern`, where `...` stands for any text."""
    regex = ".*?".join(re.escape(part) for part in pattern.split(ELLIPSIS))
    return re.fullmatch(regex, actual, re.DOTALL) is not None


def json_mismatch(expected: Any, actual: Any, where: str = "$") -> str | None:
    """Why `actual` does not match `expected`, or None if it does."""
    if expected == ELLIPSIS:
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            if key not in actual:
                return f"{where}: no key {key!r} (keys: {sorted(actual)})"
            problem = json_mismatch(value, actual[key], f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return f"{where}: expected a list, got {actual!r}"
        if not expected:
            return None if not actual else f"{where}: expected [], got {len(actual)} item(s)"
        position = 0
        for number, item in enumerate(expected):
            while position < len(actual) and json_mismatch(item, actual[position]) is not None:
                position += 1
            if position == len(actual):
                return f"{where}[{number}]: no (remaining) item matches {item!r}"
            position += 1
        return None
    if isinstance(expected, str):
        if isinstance(actual, str) and text_matches(expected, actual):
            return None
        return f"{where}: expected {expected!r}, got {actual!r}"
    if isinstance(expected, bool) or isinstance(actual, bool):
        same = isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
        return None if same else f"{where}: expected {expected!r}, got {actual!r}"
    if expected == actual:
        return None
    return f"{where}: expected {expected!r}, got {actual!r}"


def json_documents(text: str) -> list[Any]:
    """The JSON documents of `text`, one after the other (ValueError if any is not)."""
    decoder = json.JSONDecoder()
    documents = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return documents
        document, position = decoder.raw_decode(text, position)
        documents.append(document)


def text_mismatch(expected: str, actual: str) -> str | None:
    """Why the lines of `actual` do not contain those of `expected`, in order."""
    wanted = [line.strip() for line in expected.splitlines() if line.strip() not in ("", ELLIPSIS)]
    if not wanted:
        return "the output block has no line to check"
    lines = [line.strip() for line in actual.splitlines()]
    position = 0
    for line in wanted:
        while position < len(lines) and not text_matches(line, lines[position]):
            position += 1
        if position == len(lines):
            return f"no (remaining) output line matches {line!r}"
        position += 1
    return None


def output_mismatch(output: Block, stdout: str, stderr: str, fails: bool) -> str | None:
    """Why the run's output does not match the output block, or None."""
    if output.info == "json":
        try:
            actual = json_documents(stdout)
        except ValueError as err:
            return f"stdout is not JSON: {err}"
        expected = json_documents(output.body)
        if len(actual) != len(expected):
            return f"expected {len(expected)} JSON document(s), got {len(actual)}"
        for number, (want, got) in enumerate(zip(expected, actual, strict=True)):
            problem = json_mismatch(want, got, f"document {number + 1}")
            if problem:
                return problem
        return None
    return text_mismatch(output.body, stdout + ("\n" + stderr if fails else ""))


# Running --------------------------------------------------------------------


def localize(code: str, stack: Stack) -> str:
    """`code` pointed at the test stack instead of the default ports."""
    code = code.replace("localhost:50051", f"127.0.0.1:{stack.ports.grpc}")
    return code.replace("localhost:8080", f"127.0.0.1:{stack.ports.http}")


def run(example: Example, code: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Runs the example's code in `workdir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASTER_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    if example.block.info == "sh":
        args = ["bash", "-euo", "pipefail", "-c", code]
    else:
        script = workdir / "example.py"
        script.write_text(code)
        args = [sys.executable, str(script)]
    return subprocess.run(
        args, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=workdir, env=env, check=False
    )


def report(
    example: Example, code: str, result: subprocess.CompletedProcess[str], problem: str
) -> str:
    expected = example.output.body if example.output else "(none)"
    return (
        f"{example.block.where}: {problem}\n"
        f"--- command ({example.block.info}) ---\n{code}"
        f"--- exit status: {result.returncode} ---\n"
        f"--- stdout ---\n{result.stdout}\n"
        f"--- stderr ---\n{result.stderr}\n"
        f"--- expected output ({example.output.info if example.output else '-'}) ---\n{expected}"
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.block.where for e in EXAMPLES])
def test_example(example: Example, stack: Stack, tmp_path: Path) -> None:
    assert (VENV_BIN / "grpcurl").exists(), f"{VENV_BIN / 'grpcurl'} is missing; run make venv"
    assert example.output is not None, (
        f"{example.block.where}: the example has no <!-- output --> block after it"
    )
    code = localize(example.block.body, stack)
    leftover = DEFAULT_ADDRESS.search(code)
    assert leftover is None, (
        f"{example.block.where}: {leftover[0]!r} is not rewritten to the test stack; "
        "use localhost:50051 (gRPC) or localhost:8080 (REST)"
    )
    result = run(example, code, tmp_path)
    if example.fails and result.returncode == 0:
        pytest.fail(report(example, code, result, "expected a non-zero exit status"))
    if not example.fails and result.returncode != 0:
        pytest.fail(report(example, code, result, "expected exit status 0"))
    problem = output_mismatch(example.output, result.stdout, result.stderr, example.fails)
    if problem:
        pytest.fail(report(example, code, result, problem))


# The convention itself ------------------------------------------------------


# Every page with executed examples, and how many it must keep at least.
PAGES_WITH_EXAMPLES = {
    "README.md": 3,
    "docs/agents.md": 3,
    "docs/memory.md": 3,
    "docs/pools.md": 3,
    "docs/providers.md": 1,
    "docs/rooms.md": 3,
    "docs/security.md": 3,
    "docs/streaming.md": 3,
    "docs/tools.md": 3,
    "docs/workflows.md": 3,
}


@pytest.mark.parametrize(("name", "minimum"), sorted(PAGES_WITH_EXAMPLES.items()))
def test_documents_have_examples(name: str, minimum: int) -> None:
    """A renamed marker must not silently turn the docs' examples off."""
    examples = [e for e in EXAMPLES if e.block.path == REPO_ROOT / name]
    assert len(examples) >= minimum, f"{name} has {len(examples)} executed example(s)"


def test_every_page_with_examples_is_guarded() -> None:
    pages = {str(e.block.path.relative_to(REPO_ROOT)) for e in EXAMPLES}
    missing = sorted(pages - PAGES_WITH_EXAMPLES.keys())
    assert not missing, f"add {missing} to PAGES_WITH_EXAMPLES, so its examples stay on"


def test_markers_are_well_formed() -> None:
    problems = []
    for path in DOC_FILES:
        if not path.exists():
            continue
        blocks = parse_blocks(path)
        marked = sum(1 for line in path.read_text().splitlines() if ANY_MARKER.match(line.strip()))
        if marked != sum(1 for b in blocks if b.marker):
            problems.append(f"{path.name}: a marker is not directly followed by a code block")
        for position, block in enumerate(blocks):
            if not block.marker:
                continue
            if EXAMPLE_MARKER.match(block.marker):
                if block.info not in RUNNABLE:
                    problems.append(f"{block.where}: an example must be ```sh or ```python")
            elif OUTPUT_MARKER.match(block.marker):
                before = blocks[position - 1] if position else None
                if block.info not in OUTPUT_KINDS:
                    problems.append(f"{block.where}: an output block must be ```json or ```text")
                if before is None or not EXAMPLE_MARKER.match(before.marker):
                    problems.append(f"{block.where}: an output block must follow an example")
                if block.info == "json":
                    try:
                        json_documents(block.body)
                    except ValueError as err:
                        problems.append(f"{block.where}: invalid JSON: {err}")
            else:
                problems.append(f"{block.where}: unknown marker {block.marker!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        ({"id": "agt_..."}, {"id": "agt_01", "etag": "x"}, True),
        ({"id": "agt_..."}, {"id": "tool_01"}, False),
        ({"etag": "..."}, {}, False),
        ({"n": "..."}, {"n": 3}, True),
        ({"agents": [{"id": "b"}]}, {"agents": [{"id": "a"}, {"id": "b"}]}, True),
        ({"agents": [{"id": "b"}, {"id": "a"}]}, {"agents": [{"id": "a"}, {"id": "b"}]}, False),
        ({"details": []}, {"details": [{"x": 1}]}, False),
        ({"code": 5}, {"code": "5"}, False),
        ({"ok": True}, {"ok": 1}, False),
    ],
)
def test_json_matching(expected: Any, actual: Any, ok: bool) -> None:
    assert (json_mismatch(expected, actual) is None) is ok


def test_text_matching() -> None:
    output = "ERROR:\n  Code: NotFound\n  Message: agent 'x' not found\n"
    assert text_mismatch("Code: NotFound\n...\nMessage: agent '...' not found", output) is None
    assert text_mismatch("Message: agent 'x' not found\nCode: NotFound", output) is not None
    assert text_mismatch("Code: Aborted", output) is not None
