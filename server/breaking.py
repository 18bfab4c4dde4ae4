"""`make buf-breaking`: compares the working tree's protos with a git
revision (default `main`) under buf's FILE rules.

buf cannot build the old revision itself (its google/api imports are staged
from googleapis-common-protos, not fetched from the Buf Schema Registry), so
the old protos are compiled with protoc into an image buf reads."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from grpc_tools import protoc

from aster.server.codegen import REPO_ROOT, googleapis_include_dir, well_known_include_dir

BUF = REPO_ROOT / "node_modules" / ".bin" / "buf"


def compile_image(root: Path, out: Path) -> None:
    """Compiles every proto under `root` into the image `out`."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.proto"))
    code = protoc.main(
        [
            "protoc",
            f"-I{root}",
            f"-I{googleapis_include_dir()}",
            f"-I{well_known_include_dir()}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *files,
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc could not compile the protos under {root}")


def build_image(revision: str, out: Path) -> bool:
    """Compiles the protos of `revision` into `out`; False if it has none."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "proto"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        compile_image(Path(tmp) / "proto", out)
    return True


def breaking_config() -> str:
    """buf.yaml's `breaking` rules, as a config for protoc-built images."""
    import yaml

    rules = yaml.safe_load((REPO_ROOT / "buf.yaml").read_text())["breaking"]
    return json.dumps({"version": "v2", "breaking": rules})


def check(current_root: Path, against: Path) -> int:
    """Runs `buf breaking` on the protos under `current_root` against the
    image `against`; returns buf's exit code (0: nothing breaks)."""
    with tempfile.TemporaryDirectory() as tmp:
        current = Path(tmp) / "current.binpb"
        compile_image(current_root, current)
        command = [str(BUF), "breaking", str(current), "--against", str(against)]
        return subprocess.run([*command, "--config", breaking_config()], check=False).returncode


def main() -> int:
    """Compares the working tree with ASTER_BREAKING_AGAINST (default main)."""
    revision = os.environ.get("ASTER_BREAKING_AGAINST", "main")
    with tempfile.TemporaryDirectory() as tmp:
        against = Path(tmp) / "against.binpb"
        if not build_image(revision, against):
            print(f"buf-breaking: no protos at {revision!r}; nothing to compare")
            return 0
        code = check(REPO_ROOT / "proto", against)
    if code == 0:
        print(f"buf-breaking: no breaking change against {revision}")
    return code


if __name__ == "__main__":
    sys.exit(main())
