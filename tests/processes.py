"""Starts the real `aster serve` and Envoy as subprocesses on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Ports:
    """The ports of one Aster stack."""

    grpc: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)


def stack_env(ports: Ports, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a server or edge process for `ports`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASTER_")}
    env.update(
        ASTER_GRPC_PORT=str(ports.grpc),
        ASTER_HTTP_PORT=str(ports.http),
        ASTER_METRICS_PORT=str(ports.metrics),
        ASTER_ENVOY_ADMIN_PORT=str(ports.admin),
        ASTER_DATA_DIR=str(data_dir),
        ASTER_LOG_FORMAT="json",
        ASTER_SHUTDOWN_GRACE_S="3",
    )
    env.update(extra)
    return env


class Process:
    """A child process whose output goes to a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the process's output."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def assert_running(self) -> None:
        """Fails with the log if the process has exited."""
        code = self.popen.poll()
        if code is not None:
            raise AssertionError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def start_server(ports: Ports, data_dir: Path, **extra: str) -> Process:
    """`aster serve`, once healthy."""
    process = Process(
        f"server-{ports.grpc}",
        [sys.executable, "-m", "aster.server.cli", "serve"],
        stack_env(ports, data_dir, **extra),
        data_dir / "logs",
    )
    _stop_unless(lambda: wait_grpc_healthy(process, ports.grpc), process)
    return process


def _stop_unless(wait: Callable[[], None], process: Process) -> None:
    """Runs `wait`; if it fails, stops `process` before raising, so a
    process that never became ready does not outlive its test."""
    try:
        wait()
    except BaseException:
        process.stop()
        raise


def start_edge(ports: Ports, data_dir: Path, **extra: str) -> Process:
    """`aster edge` (Envoy), once it answers /health."""
    process = Process(
        f"edge-{ports.http}",
        [sys.executable, "-m", "aster.server.cli", "edge"],
        stack_env(ports, data_dir, **extra),
        data_dir / "logs",
    )
    _stop_unless(lambda: wait_http_ok(process, f"http://127.0.0.1:{ports.http}/health"), process)
    return process


def wait_grpc_healthy(process: Process, port: int, timeout: float = 30) -> None:
    """Waits until the overall health of the server on `port` is SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            process.assert_running()
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"{process.name} not healthy after {timeout}s:\n{process.log_tail()}")


def wait_http_ok(process: Process, url: str, timeout: float = 30) -> None:
    """Waits until `url` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.assert_running()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{process.name}: {url} not OK after {timeout}s:\n{process.log_tail()}")
