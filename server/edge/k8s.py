"""The Envoy config the Kubernetes edge runs, committed under k8s/.

The edge pods run Envoy directly on two keys of the ConfigMap
`aster-edge-config` (kustomize's configMapGenerator, k8s/base/kustomization.yaml),
mounted read-only at /etc/envoy:

- `envoy.yaml`: k8s/base/edge/envoy.yaml, rendered from the settings in
  k8s/base/edge/settings.env (the same template and code as `aster edge`);
- `aster.pb`: k8s/base/edge/aster.pb, the descriptor set of gen/ without its
  source info (comments), which Envoy does not read.

An overlay that needs other edge settings keeps its own `edge/settings.env`;
its `edge/envoy.yaml` is rendered next to it (docs/deploy.md). `aster gen`
writes every one of these files, `aster gen --check` reports stale ones.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from aster.server.config import Settings
from aster.server.edge.render import edge_config, render

# Where the edge Deployment mounts the ConfigMap.
MOUNT_DIR = "/etc/envoy"
CONFIG_KEY = "envoy.yaml"
DESCRIPTOR_KEY = "aster.pb"
CONFIG_PATH = f"{MOUNT_DIR}/{CONFIG_KEY}"
DESCRIPTOR_PATH = f"{MOUNT_DIR}/{DESCRIPTOR_KEY}"
# The renderer's input in each edge directory (k8s/base/edge, overlays).
SETTINGS_FILE = "settings.env"
BASE_EDGE_DIR = Path("base") / "edge"

# The settings that shape the rendered config (edge_config reads these).
EDGE_SETTINGS = frozenset(
    {
        "upstreams",
        "http_host",
        "http_port",
        "envoy_admin_port",
        "metrics_host",
        "metrics_port",
        "max_message_bytes",
        "cors_origins",
        "edge_rate_limit_rps",
        "edge_max_concurrent_streams",
        "edge_max_connections",
        "edge_max_heap_bytes",
    }
)

HEADER = """\
# GENERATED from {settings} by `aster gen` (make gen): do not
# edit. Change the settings and regenerate; `aster gen --check` and tests/k8s
# fail while this copy is stale. The aster-edge pods run Envoy on this file
# as it is (ConfigMap aster-edge-config, mounted at {mount}).
"""


class _FileSettings(Settings):
    """Settings from the values given only: neither the environment nor a
    .env file of the machine that renders changes the committed config."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def parse_settings_file(text: str) -> dict[str, str]:
    """`ASTER_NAME=value` lines (blank lines and `#` comments skipped; no
    quoting: the value is everything after the first `=`)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        field = name.removeprefix("ASTER_").lower()
        if not sep or not name.startswith("ASTER_") or field not in EDGE_SETTINGS:
            allowed = ", ".join(f"ASTER_{f.upper()}" for f in sorted(EDGE_SETTINGS))
            raise ValueError(f"line {number}: {raw!r} is not one of {allowed}=value")
        if name in values:
            raise ValueError(f"line {number}: {name} is set twice")
        values[name] = value.strip()
    return values


def read_settings(path: Path) -> Settings:
    """The edge settings of a settings.env file, and defaults for the rest."""
    values = parse_settings_file(path.read_text())
    fields = {k.removeprefix("ASTER_").lower(): v for k, v in values.items()}
    return _FileSettings.model_validate(fields)


def compact_descriptor(data: bytes) -> bytes:
    """A descriptor set without source info: what the transcoder needs, at a
    fifth of the size (the ConfigMap, base64-encoded, must also fit the
    256 KiB annotation that a client-side `kubectl apply` writes)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(data)
    for file in files.file:
        file.ClearField("source_code_info")
    return files.SerializeToString(deterministic=True)


def render_for_kubernetes(settings: Settings, descriptor: Path, settings_name: str) -> str:
    """envoy.yaml as the edge pods load it: the descriptor at DESCRIPTOR_PATH."""
    header = HEADER.format(settings=settings_name, mount=MOUNT_DIR)
    return header + render(edge_config(settings), descriptor, DESCRIPTOR_PATH)


def settings_files(k8s_dir: Path) -> list[Path]:
    """Every edge settings file: the base's and any overlay's."""
    return sorted(k8s_dir.glob(f"**/edge/{SETTINGS_FILE}"))


def expected_files(k8s_dir: Path, descriptor: Path) -> dict[Path, bytes]:
    """What `aster gen` writes under `k8s_dir`, by path, rendered with the
    descriptor set `descriptor` (gen/'s)."""
    base_settings = k8s_dir / BASE_EDGE_DIR / SETTINGS_FILE
    if not base_settings.is_file():
        raise FileNotFoundError(f"{base_settings} is missing")
    files = {k8s_dir / BASE_EDGE_DIR / DESCRIPTOR_KEY: compact_descriptor(descriptor.read_bytes())}
    for path in settings_files(k8s_dir):
        name = path.relative_to(k8s_dir.parent).as_posix()
        try:
            settings = read_settings(path)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from None
        text = render_for_kubernetes(settings, descriptor, name)
        files[path.parent / CONFIG_KEY] = text.encode()
    return files


def stale_files(k8s_dir: Path, descriptor: Path) -> list[Path]:
    """The files of expected_files that are missing or differ."""
    return sorted(
        path
        for path, data in expected_files(k8s_dir, descriptor).items()
        if not path.is_file() or path.read_bytes() != data
    )


def write_files(k8s_dir: Path, descriptor: Path) -> list[Path]:
    """Writes the files that changed; returns them."""
    changed = []
    for path, data in expected_files(k8s_dir, descriptor).items():
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
            changed.append(path)
    return sorted(changed)
