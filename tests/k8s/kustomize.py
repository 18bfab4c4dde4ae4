"""The small part of kustomize that k8s/ uses, in pure Python.

kustomize (and kubectl) are not installed where the tests run, so the
overlays are built here. Only what k8s/ uses is supported; anything else in
a kustomization.yaml is an error, so that a new feature there cannot be
silently ignored by the tests. When kubectl is on PATH, test_manifests.py
checks that `kubectl kustomize` builds the same objects.

Supported kustomization fields:

- `resources`: YAML files (one or more documents) and directories holding a
  kustomization.yaml, in order;
- `namespace`: set on every namespaced object;
- `labels`: `pairs` added to every object's metadata.labels (not to
  selectors or pod templates: `includeSelectors`/`includeTemplates` must be
  false or absent);
- `images`: `name` with `newName` and/or `newTag`, applied to the containers
  of pod templates;
- `patches`: `path` to a strategic-merge patch, one document naming its
  target by apiVersion, kind and metadata.name. Maps merge recursively (null
  removes a key); the lists in MERGE_KEYS merge by their key and honour
  `$patch: delete` on an item; other lists are replaced; `$patch: delete` at
  the top removes the whole object.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KNOWN_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
# Lists merged item by item, by this key (the Kubernetes API's patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
DIRECTIVE = "$patch"


class KustomizeError(Exception):
    """The kustomization uses something this subset does not support."""


def build(directory: Path) -> list[Obj]:
    """The objects `kustomize build directory` produces."""
    directory = directory.resolve()
    config = _load_kustomization(directory)
    objects: list[Obj] = []
    for entry in config.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(build(path))
        else:
            objects.extend(load_documents(path))
    for patch in config.get("patches", []):
        objects = _apply_patch(objects, patch, directory)
    for image in config.get("images", []):
        for obj in objects:
            _set_image(obj, image)
    for label in config.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise KustomizeError(f"{directory}: labels may only add to metadata.labels")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    if "namespace" in config:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = config["namespace"]
    _check_unique(objects, directory)
    return objects


def load_documents(path: Path) -> list[Obj]:
    """The non-empty YAML documents of a file."""
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def key(obj: Obj) -> tuple[str, str, str]:
    """What identifies an object in a build: kind, namespace, name."""
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def _load_kustomization(directory: Path) -> Obj:
    path = directory / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    config: Obj = yaml.safe_load(path.read_text()) or {}
    unknown = set(config) - KNOWN_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: unsupported fields {sorted(unknown)}")
    for patch in config.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{path}: only `patches: - path: FILE` is supported")
    for image in config.get("images", []):
        if set(image) - {"name", "newName", "newTag"}:
            raise KustomizeError(f"{path}: images support name, newName and newTag only")
    for label in config.get("labels", []):
        if set(label) - {"pairs", "includeSelectors", "includeTemplates"}:
            raise KustomizeError(f"{path}: labels support pairs only")
    return config


def _check_unique(objects: list[Obj], directory: Path) -> None:
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        if key(obj) in seen:
            raise KustomizeError(f"{directory}: {key(obj)} appears twice")
        seen.add(key(obj))


def _group(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def _matches(obj: Obj, patch: Obj) -> bool:
    return (
        obj["kind"] == patch["kind"]
        and _group(obj["apiVersion"]) == _group(patch["apiVersion"])
        and obj["metadata"]["name"] == patch["metadata"]["name"]
    )


def _apply_patch(objects: list[Obj], entry: Obj, directory: Path) -> list[Obj]:
    path = directory / entry["path"]
    documents = load_documents(path)
    if len(documents) != 1:
        raise KustomizeError(f"{path}: a patch file holds exactly one document")
    patch = documents[0]
    targets = [obj for obj in objects if _matches(obj, patch)]
    if len(targets) != 1:
        raise KustomizeError(f"{path}: matches {len(targets)} objects, not one")
    if patch.get(DIRECTIVE) == "delete":
        return [obj for obj in objects if obj is not targets[0]]
    merged = merge(targets[0], patch, "")
    return [merged if obj is targets[0] else obj for obj in objects]


def merge(base: Any, patch: Any, field: str) -> Any:
    """Strategic merge of `patch` into `base` (both left unchanged)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        result = copy.deepcopy(base)
        for name, value in patch.items():
            if name == DIRECTIVE:
                if value != "merge":
                    raise KustomizeError(f"unsupported {DIRECTIVE}: {value}")
            elif value is None:
                result.pop(name, None)
            elif name in result:
                result[name] = merge(result[name], value, name)
            else:
                result[name] = _strip(value)
        return result
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        return _merge_list(base, patch, MERGE_KEYS[field])
    return _strip(patch)


def _merge_list(base: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    """Items of `patch` merge into the item of `base` with the same key; new
    ones come first, in the patch's order (as kustomize does)."""
    result = copy.deepcopy(base)
    added: list[Any] = []
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise KustomizeError(f"a list merged by {merge_key} has an item without it: {item}")
        index = next((i for i, old in enumerate(result) if old[merge_key] == item[merge_key]), None)
        if item.get(DIRECTIVE) == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            added.append(_strip(item))
        else:
            result[index] = merge(result[index], item, "")
    return added + result


def _strip(value: Any) -> Any:
    """`value` without patch directives or null map entries."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != DIRECTIVE and v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def pod_spec(obj: Obj) -> Obj | None:
    """The pod template's spec of a workload, or None."""
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}:
        spec: Obj = obj["spec"]["template"]["spec"]
        return spec
    if obj["kind"] == "CronJob":
        spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    return None


def _set_image(obj: Obj, image: Obj) -> None:
    spec = pod_spec(obj)
    if spec is None:
        return
    for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        name, tag = _split_image(container["image"])
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        tag = str(image["newTag"]) if "newTag" in image else tag
        container["image"] = f"{name}:{tag}" if tag else name


def _split_image(reference: str) -> tuple[str, str]:
    """(name, tag) of an image reference without a digest."""
    if "@" in reference:
        raise KustomizeError(f"image digests are not supported: {reference}")
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1 :]
    return reference, ""
