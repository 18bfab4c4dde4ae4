"""Shared helpers of the k8s/ tests: the built overlays and what is in them."""

from __future__ import annotations

import base64
import copy
import functools
import os
import re
from pathlib import Path
from typing import Any

from aster.server.config import Settings
from tests.k8s.kustomize import Obj, build, load_documents, pod_spec

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "k8s"
BASE = K8S_DIR / "base"
OVERLAYS = {"dev": K8S_DIR / "overlays" / "dev", "prod": K8S_DIR / "overlays" / "prod"}
SECRET_EXAMPLE = K8S_DIR / "secret.example.yaml"
# What `kustomize build` is run on: the base and every overlay.
BUILDS = {"base": BASE, **OVERLAYS}
# The uid the Dockerfile's runtime stage runs as.
IMAGE_UID = 10001
# The edge's Envoy config: generated (configMapGenerator), from these files.
EDGE_CONFIG = "aster-edge-config"
EDGE_FILES_DIR = BASE / "edge"


@functools.cache
def _built(name: str) -> tuple[Obj, ...]:
    return tuple(build(BUILDS[name]))


def built(name: str) -> list[Obj]:
    """The objects of a build (a fresh copy each call)."""
    return copy.deepcopy(list(_built(name)))


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    """The one object of that kind and name."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def maybe(objects: list[Obj], kind: str, name: str) -> Obj | None:
    """The object of that kind and name, if any."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found[0] if found else None


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    """Every object of a kind."""
    return [o for o in objects if o["kind"] == kind]


def workloads(objects: list[Obj]) -> list[Obj]:
    """Objects with a pod template."""
    return [o for o in objects if pod_spec(o) is not None]


def pod_labels(workload: Obj) -> dict[str, str]:
    """The labels of a workload's pods."""
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def containers(workload: Obj) -> list[Obj]:
    """The containers of a workload's pods."""
    spec = pod_spec(workload)
    assert spec is not None
    result: list[Obj] = spec["containers"]
    return result


def container(objects: list[Obj], kind: str, name: str) -> Obj:
    """The single container of a workload."""
    [only] = containers(find(objects, kind, name))
    return only


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels/matchExpressions, or a plain
    Service selector map) selects these labels."""
    if "matchLabels" in selector or "matchExpressions" in selector:
        match = selector.get("matchLabels", {})
        expressions = selector.get("matchExpressions", [])
    else:
        match, expressions = selector, []
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expression in expressions:
        value = labels.get(expression["key"])
        operator = expression["operator"]
        values = expression.get("values", [])
        ok = {
            "In": value in values,
            "NotIn": value not in values,
            "Exists": value is not None,
            "DoesNotExist": value is None,
        }[operator]
        if not ok:
            return False
    return True


def selected_workloads(objects: list[Obj], selector: dict[str, Any]) -> list[Obj]:
    """The workloads whose pods a selector picks (same namespace)."""
    return [w for w in workloads(objects) if selects(selector, pod_labels(w))]


def secret_example() -> Obj:
    """k8s/secret.example.yaml."""
    [secret] = load_documents(SECRET_EXAMPLE)
    return secret


def generated(objects: list[Obj], kind: str, name: str) -> Obj:
    """The one object a generator named `name` made (kustomize appends a
    hash of its content to the name)."""
    pattern = re.compile(rf"{re.escape(name)}-[a-z0-9]{{10}}")
    found = [o for o in objects if o["kind"] == kind and pattern.fullmatch(o["metadata"]["name"])]
    assert len(found) == 1, f"{kind}/{name}-<hash>: found {len(found)}"
    return found[0]


def config_map_files(config_map: Obj) -> dict[str, bytes]:
    """Every key of a ConfigMap as the bytes a volume mount holds."""
    files = {k: v.encode() for k, v in config_map.get("data", {}).items()}
    for name, value in config_map.get("binaryData", {}).items():
        files[name] = base64.b64decode(value)
    return files


def config_map_data(objects: list[Obj], name: str) -> dict[str, str]:
    """The data of a ConfigMap of the build."""
    data: dict[str, str] = find(objects, "ConfigMap", name).get("data", {})
    return data


def effective_env(objects: list[Obj], entry: Obj) -> dict[str, str]:
    """A container's environment as the kubelet would build it: envFrom
    ConfigMaps, then env (values, ConfigMap keys, and Secret keys taken
    from k8s/secret.example.yaml; missing optional ones are left out)."""
    secret = secret_example()["stringData"]
    env: dict[str, str] = {}
    for source in entry.get("envFrom", []):
        env.update(config_map_data(objects, source["configMapRef"]["name"]))
    for item in entry.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]
        if "configMapKeyRef" in ref:
            data = config_map_data(objects, ref["configMapKeyRef"]["name"])
            env[item["name"]] = data[ref["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in ref and ref["secretKeyRef"]["key"] in secret:
            env[item["name"]] = secret[ref["secretKeyRef"]["key"]]
    return env


def settings_kwargs(env: dict[str, str]) -> dict[str, str]:
    """The ASTER_* variables of an environment as Settings field names."""
    return {k.removeprefix("ASTER_").lower(): v for k, v in env.items() if k.startswith("ASTER_")}


def settings_from(env: dict[str, str]) -> Settings:
    """The Settings a process with exactly this environment gets (the test
    process's own ASTER_* variables are set aside meanwhile)."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("ASTER_")}
    try:
        return Settings.model_validate(settings_kwargs(env))
    finally:
        os.environ.update(saved)


def resolve_port(entry: Obj, port: int | str) -> int:
    """A container port given by number or by name."""
    for declared in entry.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            number: int = declared["containerPort"]
            return number
    raise AssertionError(f"container {entry['name']} declares no port {port!r}")
