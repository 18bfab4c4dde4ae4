"""Regenerates `gen/` from `proto/`: Python messages, gRPC stubs, typed stubs,
the descriptor set the Envoy transcoder loads, and TypeScript messages and
service descriptors (`gen/ts/`, for the TypeScript client).

Everything comes from installed packages: `grpcio-tools` (protoc and the
well-known types), `googleapis-common-protos` (`google/api`, `google/rpc`),
`mypy-protobuf` (the `.pyi` stubs) and, from npm, `@bufbuild/protoc-gen-es`
(`npm install` at the repository root). Nothing is fetched from the network.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

import google.api
import grpc_tools
from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
GEN_DIR = REPO_ROOT / "gen"
PYTHON_PACKAGE = Path("python") / "aster" / "v1"
DESCRIPTOR_NAME = "descriptor.binpb"
DESCRIPTOR_PATH = GEN_DIR / PYTHON_PACKAGE / DESCRIPTOR_NAME
TS_DIR = Path("ts")
PROTOC_GEN_ES = REPO_ROOT / "node_modules" / ".bin" / "protoc-gen-es"

# google/rpc is compiled into the descriptor set so that Envoy's
# `convert_grpc_status` can render ErrorInfo/RetryInfo details as JSON.
EXTRA_DESCRIPTOR_PROTOS = ("google/rpc/status.proto", "google/rpc/error_details.proto")

# Files from googleapis-common-protos that buf needs to resolve our imports.
BUF_DEPENDENCY_PROTOS = (
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/api/field_behavior.proto",
)


def googleapis_include_dir() -> Path:
    """The site-packages directory that holds `google/api/*.proto`."""
    return Path(next(iter(google.api.__path__))).parent.parent


def well_known_include_dir() -> Path:
    """The directory of protoc's well-known types shipped with grpcio-tools."""
    return Path(next(iter(grpc_tools.__path__))) / "_proto"


def include_dirs() -> list[Path]:
    """Every `-I` protoc needs for Aster's protos."""
    return [PROTO_DIR, googleapis_include_dir(), well_known_include_dir()]


def proto_files() -> list[str]:
    """Aster's proto files, relative to `proto/`, in a stable order."""
    return sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))


def _plugin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found; install mypy-protobuf")
    return found


def _protoc(args: list[str]) -> None:
    includes = [f"-I{d}" for d in include_dirs()]
    code = protoc.main(["grpc_tools.protoc", *includes, *args])
    if code != 0:
        raise RuntimeError(f"protoc failed (exit {code}) for: {' '.join(args)}")


def generate(out_dir: Path) -> None:
    """Writes the whole of `gen/` into `out_dir`."""
    python_out = out_dir / "python"
    package_dir = out_dir / PYTHON_PACKAGE
    package_dir.mkdir(parents=True, exist_ok=True)
    files = proto_files()
    _protoc(
        [
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={python_out}",
            f"--grpc_python_out={python_out}",
            f"--mypy_out={python_out}",
            f"--mypy_grpc_out={python_out}",
            *files,
        ]
    )
    _protoc(
        [
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={package_dir / DESCRIPTOR_NAME}",
            *files,
            *EXTRA_DESCRIPTOR_PROTOS,
        ]
    )
    (package_dir / "__init__.py").write_text('"""Generated from proto/aster/v1. Do not edit."""\n')
    (package_dir / "py.typed").write_text("")
    _generate_typescript(out_dir / TS_DIR, files)


def _generate_typescript(ts_out: Path, files: list[str]) -> None:
    if not PROTOC_GEN_ES.exists():
        raise RuntimeError(
            f"{PROTOC_GEN_ES.relative_to(REPO_ROOT)} not found: run `npm install` at the "
            "repository root (make does) to generate the TypeScript code"
        )
    ts_out.mkdir(parents=True, exist_ok=True)
    # google/api/annotations is imported by every file, and clients read
    # google/rpc error details: generate those too (the well-known types
    # come from @bufbuild/protobuf/wkt).
    _protoc(
        [
            f"--plugin=protoc-gen-es={PROTOC_GEN_ES}",
            f"--es_out={ts_out}",
            "--es_opt=target=ts,import_extension=js",
            *files,
            *BUF_DEPENDENCY_PROTOS,
            *EXTRA_DESCRIPTOR_PROTOS,
        ]
    )
    # ES modules, as the `.js` import extensions above expect.
    (ts_out / "package.json").write_text('{"private": true, "type": "module"}\n')


def stale_files(out_dir: Path = GEN_DIR) -> list[str]:
    """Regenerates into a temp dir; returns the files of `out_dir` that differ."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        return _diff(fresh, out_dir)


def _diff(fresh: Path, current: Path) -> list[str]:
    def listing(root: Path) -> set[str]:
        return {
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }

    fresh_files, current_files = listing(fresh), listing(current)
    differ = fresh_files ^ current_files
    for name in fresh_files & current_files:
        if not filecmp.cmp(fresh / name, current / name, shallow=False):
            differ.add(name)
    return sorted(differ)


def stage_buf_dependencies(target: Path) -> None:
    """Copies the `google/api` protos buf needs into `target` (git-ignored)."""
    source = googleapis_include_dir()
    for name in BUF_DEPENDENCY_PROTOS:
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        data = (source / name).read_bytes()
        if not dest.exists() or dest.read_bytes() != data:
            dest.write_bytes(data)


def regenerate() -> None:
    """Replaces `gen/` with freshly generated files."""
    # Generated beside gen/ and swapped in by renames, so that gen/ is
    # complete at every moment (a server starting meanwhile imports it).
    with tempfile.TemporaryDirectory(dir=GEN_DIR.parent, prefix=".gen-") as tmp:
        fresh = Path(tmp) / "gen"
        generate(fresh)
        old = Path(tmp) / "old"
        if GEN_DIR.exists():
            GEN_DIR.rename(old)
        fresh.rename(GEN_DIR)
    os.utime(GEN_DIR)
