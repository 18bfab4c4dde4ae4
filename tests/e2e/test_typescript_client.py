"""The TypeScript client (clients/typescript) against the real server: the
generated code in gen/ts compiles with strict tsc, and its node:test suite
passes over gRPC."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.processes import Ports

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO_ROOT / "clients" / "typescript"
TSC = REPO_ROOT / "node_modules" / ".bin" / "tsc"
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client and its tests compiled to JavaScript, in a temp dir."""
    if not TSC.exists() or shutil.which("node") is None:
        pytest.fail("node and node_modules/.bin/tsc are needed: run `npm install` (make does)")
    # Inside the repository, so that imports resolve from its node_modules.
    out = REPO_ROOT / "build" / "ts-client" / tmp_path_factory.mktemp("ts").name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "package.json").write_text('{"type": "module"}\n')
    result = subprocess.run(
        [str(TSC), "-p", str(CLIENT_DIR), "--outDir", str(out)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out / "clients" / "typescript" / "test"


def _node_tests(tests: Path, grpc_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ASTER_GRPC_URL": grpc_url}
    return subprocess.run(
        ["node", "--test", "--test-reporter=tap", str(tests)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        cwd=REPO_ROOT,
    )


def test_the_typescript_suite_passes_against_the_server(compiled: Path, stack: Stack) -> None:
    result = _node_tests(compiled, f"http://{stack.grpc_target}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "# fail 0" in result.stdout
    assert "# pass 6" in result.stdout, result.stdout[-2000:]


def test_the_typescript_suite_fails_without_a_server(compiled: Path) -> None:
    result = _node_tests(compiled, f"http://127.0.0.1:{Ports().grpc}")
    assert result.returncode != 0
    assert "# pass 0" in result.stdout, result.stdout[-2000:]
