"""The rendered Envoy configuration validates and routes streams without timeouts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from aster.server.config import Settings
from aster.server.edge.render import descriptor_path, edge_config, render, streaming_methods
from aster.server.edge.runner import envoy_binary


def rendered(**settings: object) -> str:
    return render(edge_config(Settings(**settings)))  # type: ignore[arg-type]


def test_envoy_accepts_the_rendered_config(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(rendered(upstreams="127.0.0.1:50061,127.0.0.1:50062"))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_streaming_routes_have_no_timeout_and_unary_ones_do() -> None:
    config = yaml.safe_load(rendered())
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    streaming = {r["match"].get("path"): r["route"]["timeout"] for r in routes}
    methods = streaming_methods(descriptor_path())
    assert "/aster.v1.AgentService/Chat" in methods
    assert "/aster.v1.AgentService/StreamRun" in methods
    for method in methods:
        assert streaming[method] == "0s"
    assert routes[-1]["match"] == {"prefix": "/"}
    assert routes[-1]["route"]["timeout"] != "0s"


def test_admin_binds_loopback_only_and_upstreams_are_listed() -> None:
    config = yaml.safe_load(rendered(upstreams="10.0.0.1:1,10.0.0.2:2"))
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    cluster = config["static_resources"]["clusters"][0]
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [1, 2]
