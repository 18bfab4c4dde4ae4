"""The contract: generated code is fresh, buf lint is clean, every RPC has an
HTTP binding, and everything users touch has a comment."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from aster.server import codegen
from aster.server.edge.render import descriptor_path
from aster.server.rpc.catalog import service_names

REPO = Path(__file__).resolve().parent.parent
BUF = REPO / "node_modules" / ".bin" / "buf"


def test_gen_is_fresh() -> None:
    stale = codegen.stale_files()
    assert not stale, f"gen/ is stale; run `make gen`. Differing: {stale}"


def test_stale_detection_names_the_files(tmp_path: Path) -> None:
    copy = tmp_path / "gen"
    shutil.copytree(codegen.GEN_DIR, copy)
    (copy / "python/aster/v1/agent_pb2.py").write_text("# edited\n")
    (copy / "python/aster/v1/extra.py").write_text("")
    assert codegen.stale_files(copy) == ["python/aster/v1/agent_pb2.py", "python/aster/v1/extra.py"]


def _files() -> list[descriptor_pb2.FileDescriptorProto]:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_path().read_bytes())
    return [f for f in files.file if f.package == "aster.v1"]


def test_descriptor_set_carries_error_details_for_envoy() -> None:
    names = {
        f.name
        for f in descriptor_pb2.FileDescriptorSet.FromString(descriptor_path().read_bytes()).file
    }
    assert {"google/rpc/status.proto", "google/rpc/error_details.proto"} <= names


def test_every_rpc_has_an_http_binding() -> None:
    missing = []
    services = 0
    for file in _files():
        for service in file.service:
            services += 1
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    missing.append(f"{service.name}.{method.name}")
    assert services == len(service_names())
    assert not missing, missing


def _uncommented(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Elements of `file` with no leading comment. Source-info paths: 4 =
    message_type, 2 = field, 3 = nested message, 4 (in a message) or 5 (top
    level) = enum, 2 (in an enum) = value, 6 = service, 2 (in a service) = method."""
    comments = {
        tuple(loc.path) for loc in file.source_code_info.location if loc.leading_comments.strip()
    }
    missing: list[str] = []

    def check(path: tuple[int, ...], name: str) -> None:
        if path not in comments:
            missing.append(f"{file.name}: {name}")

    def walk_enum(
        enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], name: str
    ) -> None:
        check(path, name)
        for i, value in enumerate(enum.value):
            check((*path, 2, i), f"{name}.{value.name}")

    def walk_message(
        message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], name: str
    ) -> None:
        check(path, name)
        for i, field in enumerate(message.field):
            check((*path, 2, i), f"{name}.{field.name}")
        for i, nested in enumerate(message.nested_type):
            if not nested.options.map_entry:
                walk_message(nested, (*path, 3, i), f"{name}.{nested.name}")
        for i, enum in enumerate(message.enum_type):
            walk_enum(enum, (*path, 4, i), f"{name}.{enum.name}")

    for i, message in enumerate(file.message_type):
        walk_message(message, (4, i), message.name)
    for i, enum in enumerate(file.enum_type):
        walk_enum(enum, (5, i), enum.name)
    for i, service in enumerate(file.service):
        check((6, i), service.name)
        for j, method in enumerate(service.method):
            check((6, i, 2, j), f"{service.name}.{method.name}")
    return missing


def test_every_element_has_a_comment() -> None:
    uncommented = [name for file in _files() for name in _uncommented(file)]
    assert not uncommented, uncommented


def test_the_comment_check_finds_a_missing_comment() -> None:
    file = descriptor_pb2.FileDescriptorProto(name="x.proto")
    file.message_type.add(name="Bare").field.add(name="f")
    assert _uncommented(file) == ["x.proto: Bare", "x.proto: Bare.f"]


def _buf(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.fail("buf is not installed; run `make test` (npm install fetches it)")
    codegen.stage_buf_dependencies(REPO / "build" / "protodeps")
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_is_clean() -> None:
    result = _buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_would_catch_a_violation(tmp_path: Path) -> None:
    # Proves the lint above really lints our protos.
    shutil.copytree(REPO / "proto", tmp_path / "proto")
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    codegen.stage_buf_dependencies(tmp_path / "build" / "protodeps")
    bad = tmp_path / "proto/aster/v1/system.proto"
    bad.write_text(bad.read_text() + "\nmessage bad_name {}\n")
    result = _buf("lint", cwd=tmp_path)
    assert result.returncode != 0
    assert "bad_name" in result.stdout


def test_buf_breaking_against_head_passes_and_catches_a_renumbered_field(tmp_path: Path) -> None:
    from aster.server import breaking

    head = tmp_path / "head.binpb"
    assert breaking.build_image("HEAD", head)
    assert breaking.check(REPO / "proto", head) == 0
    changed = tmp_path / "proto"
    shutil.copytree(REPO / "proto", changed)
    system = changed / "aster/v1/system.proto"
    text = system.read_text()
    assert "string storage_backend = 4;" in text
    system.write_text(text.replace("string storage_backend = 4;", "string storage_backend = 44;"))
    assert breaking.check(changed, head) != 0


# --- Per-RPC authorisation (aster.v1.auth, proto/aster/v1/options.proto) ---

import re  # noqa: E402

from google.api import http_pb2  # noqa: E402

from aster.v1 import options_pb2  # noqa: E402  (registers the `auth` extension)

AUTH_AREAS = ("agents", "sessions", "runs", "pools", "rooms", "memory", "workflows", "tools")
AUTH_SCOPES = {"admin"} | {f"{area}.{level}" for area in AUTH_AREAS for level in ("read", "write")}


def _auth_problems(files: list[descriptor_pb2.FileDescriptorProto]) -> tuple[list[str], set[str]]:
    """The RPCs of `files` whose `aster.v1.auth` option is missing, empty or
    names an unknown scope, and the set of scopes used."""
    problems: list[str] = []
    used: set[str] = set()
    for file in files:
        for service in file.service:
            for method in service.method:
                name = f"{service.name}.{method.name}"
                # Re-parse so the extension resolves however `method` was built.
                options = descriptor_pb2.MethodOptions.FromString(
                    method.options.SerializeToString()
                )
                if not options.HasExtension(options_pb2.auth):
                    problems.append(f"{name}: no (aster.v1.auth) option")
                    continue
                rule = options.Extensions[options_pb2.auth]
                if rule.public:
                    if rule.scope:
                        problems.append(f"{name}: public but also scope {rule.scope!r}")
                    continue
                if not rule.scope:
                    problems.append(f"{name}: empty scope and not public")
                elif rule.scope not in AUTH_SCOPES:
                    problems.append(f"{name}: unknown scope {rule.scope!r}")
                else:
                    used.add(rule.scope)
    return problems, used


def test_every_rpc_has_an_auth_rule() -> None:
    problems, used = _auth_problems(_files())
    assert not problems, problems
    assert used == AUTH_SCOPES


def test_public_rpcs_are_only_health() -> None:
    public = [
        f"{service.name}.{method.name}"
        for file in _files()
        for service in file.service
        for method in service.method
        if method.options.Extensions[options_pb2.auth].public
    ]
    assert public == ["SystemService.GetHealth"]


def test_the_auth_check_finds_missing_and_bad_rules() -> None:
    file = descriptor_pb2.FileDescriptorProto(name="x.proto", package="aster.v1")
    service = file.service.add(name="XService")
    service.method.add(name="Bare")
    service.method.add(name="Empty").options.Extensions[options_pb2.auth].SetInParent()
    service.method.add(name="Odd").options.Extensions[options_pb2.auth].scope = "agents.delete"
    service.method.add(name="Fine").options.Extensions[options_pb2.auth].scope = "tools.read"
    service.method.add(name="Open").options.Extensions[options_pb2.auth].public = True
    problems, used = _auth_problems([file])
    assert problems == [
        "XService.Bare: no (aster.v1.auth) option",
        "XService.Empty: empty scope and not public",
        "XService.Odd: unknown scope 'agents.delete'",
    ]
    assert used == {"tools.read"}


def _http_routes(rule: http_pb2.HttpRule) -> list[tuple[str, str]]:
    """(verb, path) of a binding and of its additional bindings."""
    routes = []
    for binding in [rule, *rule.additional_bindings]:
        verb = binding.WhichOneof("pattern")
        if verb == "custom":
            routes.append((binding.custom.kind.upper(), binding.custom.path))
        elif verb:
            routes.append((verb.upper(), getattr(binding, verb)))
    return routes


def test_no_two_rpcs_share_an_http_route() -> None:
    # Variable names do not matter to the router: `{id}` and `{agent_id}`
    # in the same place clash.
    seen: dict[tuple[str, str], str] = {}
    clashes = []
    for file in _files():
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                for verb, path in _http_routes(rule):
                    key = (verb, re.sub(r"\{[^}]*\}", "{}", path))
                    name = f"{service.name}.{method.name}"
                    if key in seen:
                        clashes.append(f"{verb} {path}: {seen[key]} and {name}")
                    seen.setdefault(key, name)
    assert not clashes, clashes


def _defined_by_aster(servicer: object, name: str) -> bool:
    # The generated base classes define every RPC (answering UNIMPLEMENTED);
    # only methods of our own classes count.
    ours = [cls for cls in type(servicer).__mro__ if cls.__module__.startswith("aster.server")]
    return any(name in vars(cls) for cls in ours)


async def test_every_rpc_of_every_service_is_implemented(tmp_path: Path) -> None:
    from aster.server.app import build_components, servicers
    from aster.server.config import Settings
    from aster.server.rpc.catalog import SERVICES

    settings = Settings(data_dir=tmp_path, embedder="none")
    components = build_components(settings)
    try:
        registered = servicers(components)
        assert sorted(registered) == sorted(entry.name for entry in SERVICES)
        missing = [
            f"{entry.name}.{method.name}"
            for entry in SERVICES
            for method in entry.descriptor().methods
            if not _defined_by_aster(registered[entry.name], method.name)
        ]
    finally:
        await components.close(grace_s=0)
    assert missing == []
