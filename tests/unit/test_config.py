"""Settings validation."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from aster.server.config import Settings


def test_defaults() -> None:
    settings = Settings()
    assert (settings.grpc_port, settings.http_port, settings.metrics_port) == (50051, 8080, 9464)
    assert settings.envoy_admin_port == 9901
    assert settings.storage_backend == "sqlite"
    assert settings.effective_database_url.endswith("/.aster/aster.db")
    assert settings.reflection_enabled is True
    assert settings.auth_methods == ()
    assert settings.shutdown_grace_s == 10
    assert settings.workers == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"grpc_port": 70000},
        {"workers": 0},
        {"log_level": "loud"},
        {"database_url": "mysql://x"},
        {"grpc_port": 9000, "http_port": 9000},
        {"shutdown_grace_s": -1},
    ],
)
def test_bad_values_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**changes)  # type: ignore[arg-type]


def test_the_cli_names_the_bad_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aster.server.cli", "serve"],
        env={"ASTER_GRPC_PORT": "not-a-port", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ASTER_GRPC_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_upstreams_parse() -> None:
    settings = Settings(upstreams="a:1, b:2")
    assert settings.upstream_addresses == [("a", 1), ("b", 2)]
    with pytest.raises(ValueError, match="host:port"):
        _ = Settings(upstreams="nohost").upstream_addresses


def test_production_mode_drains_five_seconds_by_default() -> None:
    production = {"mode": "production", "auth_mode": "api_key"}
    assert Settings(**production).shutdown_drain_seconds == 5  # type: ignore[arg-type]
    assert Settings(**production, shutdown_drain_s=0).shutdown_drain_seconds == 0  # type: ignore[arg-type]
    assert Settings().shutdown_drain_seconds == 0
