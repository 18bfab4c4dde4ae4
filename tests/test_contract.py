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
