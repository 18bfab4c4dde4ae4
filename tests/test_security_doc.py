"""The scopes table of docs/security.md is generated from the protos.

Every RPC declares what it needs in its `(aster.v1.auth)` option (a scope,
or `public`); `scopes_table()` renders one row per RPC of every service of
`aster.server.rpc.catalog.SERVICES`, with its REST route from the
`google.api.http` option. The test fails when the table between the
`<!-- scopes:begin -->` and `<!-- scopes:end -->` markers differs, and prints
the expected table; `python -m tests.test_security_doc` prints it too.
"""

from __future__ import annotations

import re
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import MethodDescriptor

from aster.server.auth.rules import rules_for
from aster.server.rpc.catalog import SERVICES
from aster.v1 import options_pb2

DOC = Path(__file__).resolve().parents[1] / "docs" / "security.md"
BEGIN = "<!-- scopes:begin -->"
END = "<!-- scopes:end -->"
PATTERNS = ("get", "post", "patch", "put", "delete")


def _route(rule: http_pb2.HttpRule) -> str:
    for verb in PATTERNS:
        path = getattr(rule, verb)
        if path:
            return f"`{verb.upper()} {path}`"
    return ""


def rest_routes(method: MethodDescriptor) -> str:
    """The method's REST routes (`GET /v1/agents`), or an empty string."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return ""
    rule = options.Extensions[annotations_pb2.http]
    routes = [_route(rule), *(_route(extra) for extra in rule.additional_bindings)]
    return "<br>".join(route for route in routes if route)


def scopes_table() -> str:
    """The Markdown table: service, method, REST route, scope or public."""
    lines = ["| Service | Method | REST | Needs |", "|---|---|---|---|"]
    for entry in SERVICES:
        service = entry.descriptor()
        for method in service.methods:
            rule = method.GetOptions().Extensions[options_pb2.auth]
            needs = "public" if rule.public else f"`{rule.scope}`"
            lines.append(
                f"| `{service.name}` | `{method.name}` | {rest_routes(method)} | {needs} |"
            )
    return "\n".join(lines) + "\n"


def documented_table(text: str) -> str:
    """The text between the markers (without surrounding blank lines)."""
    found = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), text, re.DOTALL)
    assert found, f"{DOC}: no {BEGIN} ... {END} section"
    return found[1].strip("\n") + "\n"


def test_scopes_table_matches_the_protos() -> None:
    expected = scopes_table()
    actual = documented_table(DOC.read_text())
    assert actual == expected, (
        f"the scopes table of {DOC.name} is out of date; paste this between "
        f"{BEGIN} and {END}:\n\n{expected}"
    )


def test_table_agrees_with_the_server_rules() -> None:
    """The table reads the same option the auth interceptor enforces."""
    rules = rules_for([entry.descriptor() for entry in SERVICES])
    rows = [line for line in scopes_table().splitlines()[2:]]
    assert len(rows) == len(rules)
    for row in rows:
        service, method, _, needs = (cell.strip().strip("`") for cell in row.strip("|").split("|"))
        rule = rules[f"/aster.v1.{service}/{method}"]
        assert needs == ("public" if rule.public else rule.scope), row


if __name__ == "__main__":
    print(scopes_table(), end="")
