"""The edge's ConfigMap: the envoy.yaml and descriptor set the edge pods run
(k8s/base/edge, written by `aster gen`) are fresh, Envoy accepts them, the
Deployment mounts and runs exactly them, and they fit in a ConfigMap."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from aster.server import codegen
from aster.server.edge import k8s
from aster.server.edge.render import (
    edge_config,
    idempotent_methods,
    render,
    streaming_methods,
)
from aster.server.edge.runner import envoy_binary
from aster.server.rpc.catalog import service_names
from tests.k8s.kustomize import Obj, build, key
from tests.k8s.objects import (
    BUILDS,
    EDGE_CONFIG,
    EDGE_FILES_DIR,
    K8S_DIR,
    REPO_ROOT,
    built,
    config_map_files,
    container,
    find,
    generated,
)

EDGE = "aster-edge"
# What one ConfigMap may hold (the API server's limit on data + binaryData).
CONFIG_MAP_LIMIT = 1024 * 1024
# A client-side `kubectl apply` copies the object into the annotation
# kubectl.kubernetes.io/last-applied-configuration; annotations are limited
# to 256 KiB in all. Keep a margin for growth of the API.
APPLY_ANNOTATION_BUDGET = 192 * 1024


def _volume_for(objects: list[Obj]) -> tuple[Obj, Obj]:
    """The edge container's mount of its ConfigMap, and that volume."""
    spec = find(objects, "Deployment", EDGE)["spec"]["template"]["spec"]
    entry = container(objects, "Deployment", EDGE)
    volumes = {v["name"]: v for v in spec["volumes"]}
    [mount] = [m for m in entry["volumeMounts"] if "configMap" in volumes[m["name"]]]
    return mount, volumes[mount["name"]]


def _validate(tmp_path: Path, files: dict[str, bytes]) -> None:
    """`envoy --mode validate` on the ConfigMap's envoy.yaml, its descriptor
    path pointed at a local copy of the ConfigMap's descriptor set."""
    descriptor = tmp_path / k8s.DESCRIPTOR_KEY
    descriptor.write_bytes(files[k8s.DESCRIPTOR_KEY])
    text = files[k8s.CONFIG_KEY].decode()
    assert text.count(f'"{k8s.DESCRIPTOR_PATH}"') == 1
    config = tmp_path / k8s.CONFIG_KEY
    config.write_text(text.replace(k8s.DESCRIPTOR_PATH, str(descriptor)))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_committed_edge_files_are_fresh() -> None:
    """k8s/base/edge/envoy.yaml and aster.pb are what `aster gen` writes
    from settings.env, the template and gen/'s descriptor set."""
    stale = k8s.stale_files(K8S_DIR, codegen.DESCRIPTOR_PATH)
    names = [p.relative_to(REPO_ROOT).as_posix() for p in stale]
    assert not names, f"stale: {names}; run `make gen` (aster gen)"


def test_rendering_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The committed files depend on settings.env only, not on the ASTER_*
    variables of whoever runs `aster gen`."""
    monkeypatch.setenv("ASTER_CORS_ORIGINS", "https://elsewhere.example.com")
    monkeypatch.setenv("ASTER_HTTP_PORT", "9999")
    assert k8s.stale_files(K8S_DIR, codegen.DESCRIPTOR_PATH) == []


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_envoy_accepts_the_config_map(tmp_path: Path, name: str) -> None:
    files = config_map_files(generated(built(name), "ConfigMap", EDGE_CONFIG))
    _validate(tmp_path, files)


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_the_config_map_holds_the_committed_files(name: str) -> None:
    config_map = generated(built(name), "ConfigMap", EDGE_CONFIG)
    # Text in data (readable in `kubectl get -o yaml` and diffs), the
    # descriptor set in binaryData.
    assert set(config_map["data"]) == {k8s.CONFIG_KEY}
    assert set(config_map["binaryData"]) == {k8s.DESCRIPTOR_KEY}
    files = config_map_files(config_map)
    assert files[k8s.CONFIG_KEY] == (EDGE_FILES_DIR / k8s.CONFIG_KEY).read_bytes()
    assert files[k8s.DESCRIPTOR_KEY] == (EDGE_FILES_DIR / k8s.DESCRIPTOR_KEY).read_bytes()
    assert config_map["metadata"]["labels"]["app.kubernetes.io/component"] == "edge"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_the_edge_mounts_the_keys_it_runs(name: str) -> None:
    """The Deployment mounts the ConfigMap's envoy.yaml and aster.pb
    read-only, Envoy's -c names the mounted envoy.yaml, and envoy.yaml names
    the mounted descriptor set."""
    objects = built(name)
    config_map = generated(objects, "ConfigMap", EDGE_CONFIG)
    mount, volume = _volume_for(objects)
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    items = {i["key"]: i["path"] for i in volume["configMap"]["items"]}
    assert items == {k8s.CONFIG_KEY: k8s.CONFIG_KEY, k8s.DESCRIPTOR_KEY: k8s.DESCRIPTOR_KEY}
    assert set(items) <= set(config_map_files(config_map))
    assert mount["mountPath"] == k8s.MOUNT_DIR

    args = container(objects, "Deployment", EDGE)["args"]
    [config_path] = [args[i + 1] for i, arg in enumerate(args) if arg in ("-c", "--config-path")]
    assert config_path == f"{mount['mountPath']}/{items[k8s.CONFIG_KEY]}" == k8s.CONFIG_PATH

    envoy = yaml.safe_load(config_map_files(config_map)[k8s.CONFIG_KEY])
    [listener] = envoy["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = {f["name"]: f["typed_config"] for f in manager["http_filters"]}
    transcoder = filters["envoy.filters.http.grpc_json_transcoder"]
    assert transcoder["proto_descriptor"] == f"{mount['mountPath']}/{items[k8s.DESCRIPTOR_KEY]}"
    assert transcoder["services"] == service_names()


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_the_config_map_fits(name: str) -> None:
    config_map = generated(built(name), "ConfigMap", EDGE_CONFIG)
    size = sum(len(v) for v in config_map_files(config_map).values())
    assert size < CONFIG_MAP_LIMIT / 4, size
    # What client-side apply stores in the annotation: the object as JSON.
    applied = len(json.dumps(config_map, separators=(",", ":")))
    assert applied < APPLY_ANNOTATION_BUDGET, applied


def test_the_compact_descriptor_routes_like_the_full_one(tmp_path: Path) -> None:
    """Stripping the source info changes nothing Envoy or the renderer reads."""
    compact = tmp_path / k8s.DESCRIPTOR_KEY
    compact.write_bytes((EDGE_FILES_DIR / k8s.DESCRIPTOR_KEY).read_bytes())
    full = codegen.DESCRIPTOR_PATH
    assert compact.stat().st_size < full.stat().st_size / 2
    assert streaming_methods(compact) == streaming_methods(full)
    assert idempotent_methods(compact) == idempotent_methods(full)
    settings = k8s.read_settings(EDGE_FILES_DIR / k8s.SETTINGS_FILE)
    assert render(edge_config(settings), compact, k8s.DESCRIPTOR_PATH) == render(
        edge_config(settings), full, k8s.DESCRIPTOR_PATH
    )


def test_the_settings_file_names_edge_settings_only() -> None:
    assert k8s.parse_settings_file("# c\n\nASTER_HTTP_PORT=8081\nASTER_CORS_ORIGINS=\n") == {
        "ASTER_HTTP_PORT": "8081",
        "ASTER_CORS_ORIGINS": "",
    }
    for text in (
        "ASTER_JWT_ISSUER=x",  # not read by the edge: the server's setting
        "ASTER_HTTP_PORTT=1",
        "HTTP_PORT=1",
        "ASTER_HTTP_PORT",
        "ASTER_HTTP_PORT=1\nASTER_HTTP_PORT=2",
    ):
        with pytest.raises(ValueError, match="line"):
            k8s.parse_settings_file(text)


OVERLAY_KUSTOMIZATION = """\
resources:
  - {base}
configMapGenerator:
  - name: aster-edge-config
    behavior: merge
    files:
      - edge/envoy.yaml
"""


def test_an_overlay_with_its_own_edge_settings(tmp_path: Path) -> None:
    """The documented way for an overlay to change edge settings: its own
    edge/settings.env, rendered by `aster gen` into edge/envoy.yaml, merged
    over the base's key (the base's descriptor set stays)."""
    k8s_dir = tmp_path / "k8s"
    shutil.copytree(K8S_DIR / "base", k8s_dir / "base")
    overlay = k8s_dir / "overlays" / "cors"
    (overlay / "edge").mkdir(parents=True)
    settings = (EDGE_FILES_DIR / k8s.SETTINGS_FILE).read_text()
    settings = settings.replace(
        "ASTER_CORS_ORIGINS=\n", "ASTER_CORS_ORIGINS=https://app.example.com\n"
    )
    (overlay / "edge" / k8s.SETTINGS_FILE).write_text(settings)
    (overlay / "kustomization.yaml").write_text(OVERLAY_KUSTOMIZATION.format(base="../../base"))

    missing = overlay / "edge" / k8s.CONFIG_KEY
    assert k8s.stale_files(k8s_dir, codegen.DESCRIPTOR_PATH) == [missing]
    written = k8s.write_files(k8s_dir, codegen.DESCRIPTOR_PATH)
    assert written == [missing]
    assert k8s.stale_files(k8s_dir, codegen.DESCRIPTOR_PATH) == []

    objects = build(overlay)
    config_map = generated(objects, "ConfigMap", EDGE_CONFIG)
    base_map = generated(built("base"), "ConfigMap", EDGE_CONFIG)
    assert config_map["metadata"]["name"] != base_map["metadata"]["name"]
    files = config_map_files(config_map)
    assert files[k8s.DESCRIPTOR_KEY] == config_map_files(base_map)[k8s.DESCRIPTOR_KEY]
    text = files[k8s.CONFIG_KEY].decode()
    assert "https://app.example.com" in text
    assert "overlays/cors/edge/settings.env" in text
    _mount, volume = _volume_for(objects)
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    _validate(tmp_path, files)

    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        result = subprocess.run(
            [kubectl, "kustomize", str(overlay)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        theirs: dict[Any, Obj] = {key(o): o for o in yaml.safe_load_all(result.stdout) if o}
        assert {key(o): o for o in objects} == theirs
