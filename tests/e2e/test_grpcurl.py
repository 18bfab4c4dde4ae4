"""The grpcurl binary against the real server, through reflection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from aster.server.rpc.catalog import service_names
from tests.conftest import Stack
from tests.processes import Ports, start_server

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def test_list_shows_every_service_and_health(stack: Stack) -> None:
    result = subprocess.run(
        [GRPCURL, "-plaintext", stack.grpc_target, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    assert len(service_names()) == 9
    assert set(service_names()) <= listed
    assert "grpc.health.v1.Health" in listed


def test_describe_shows_comments(stack: Stack) -> None:
    result = subprocess.run(
        [GRPCURL, "-plaintext", stack.grpc_target, "describe", "aster.v1.Agent"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "display_name" in result.stdout
    assert "etag" in result.stdout


def test_create_agent_through_reflection(stack: Stack) -> None:
    body = json.dumps({"agent": {"display_name": "From grpcurl", "labels": {"via": "grpcurl"}}})
    result = subprocess.run(
        [GRPCURL, "-plaintext", "-d", body, stack.grpc_target, "aster.v1.AgentService/CreateAgent"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert created["display_name"] == "From grpcurl"
    assert created["id"].startswith("agt_")
    got = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-d",
            json.dumps({"id": created["id"]}),
            stack.grpc_target,
            "aster.v1.AgentService/GetAgent",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json.loads(got.stdout)["etag"] == created["etag"]


def test_errors_show_code_and_details(stack: Stack) -> None:
    result = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-d",
            '{"agent": {"display_name": ""}}',
            stack.grpc_target,
            "aster.v1.AgentService/CreateAgent",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "agent.display_name" in result.stderr
    assert "google.rpc.ErrorInfo" in result.stderr


def test_reflection_can_be_switched_off(tmp_path: Path) -> None:
    ports = Ports()
    server = start_server(ports, tmp_path, ASTER_REFLECTION="false")
    try:
        result = subprocess.run(
            [GRPCURL, "-plaintext", f"127.0.0.1:{ports.grpc}", "list"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode != 0
        assert "does not support the reflection API" in result.stderr
    finally:
        assert server.stop() == 0
