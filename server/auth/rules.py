"""The authorisation rule of every RPC, read from the protos' `(aster.v1.auth)`
method option, so each RPC states its scope where it is defined."""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf.descriptor import ServiceDescriptor

from aster.v1 import options_pb2

SCOPE_PATTERN = re.compile(r"^(admin|[a-z]+\.(read|write))$")


@dataclass(frozen=True)
class Rule:
    """What an RPC needs: a scope, or nothing (public)."""

    scope: str
    public: bool = False


def rules_for(services: list[ServiceDescriptor]) -> dict[str, Rule]:
    """`/package.Service/Method` → its rule, for every method of `services`.
    A method without the option is a programming error and fails start-up."""
    rules: dict[str, Rule] = {}
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            path = f"/{service.full_name}/{method.name}"
            if not options.HasExtension(options_pb2.auth):
                raise RuntimeError(f"{path} has no (aster.v1.auth) option")
            rule = options.Extensions[options_pb2.auth]
            if not rule.public and not SCOPE_PATTERN.match(rule.scope):
                raise RuntimeError(f"{path} has no valid scope ({rule.scope!r})")
            rules[path] = Rule(scope=rule.scope, public=rule.public)
    return rules


def known_scopes(rules: dict[str, Rule]) -> set[str]:
    """Every scope some RPC needs, plus admin."""
    return {rule.scope for rule in rules.values() if rule.scope} | {"admin"}
