"""What every benchmark script shares: child processes stopped however a run
ends, free ports, readiness waits, one fresh `aster serve`, percentiles, the
machine's description and the entry point that ties them together.

Scripts run as `python bench/<name>.py`, so bench/ is on sys.path and they
import this module as `harness` (not a stdlib name, so it shadows nothing).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HOST = "127.0.0.1"
BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
NCPU = os.cpu_count() or 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 60.0
GRPC_OPTIONS = [("grpc.enable_http_proxy", 0)]


class BenchError(Exception):
    """A failure that ends the run with a readable message."""


# --------------------------------------------------------------------------
# Processes


@dataclass(frozen=True)
class ProcInfo:
    """What /proc/<pid>/stat says about one process."""

    pid: int
    ppid: int
    pgid: int
    comm: str
    cpu_s: float


def _read_stat(pid: int) -> ProcInfo | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    close = text.rindex(")")
    comm = text[text.index("(") + 1 : close]
    fields = text[close + 2 :].split()
    # Fields 4, 5, 14 and 15 of proc(5): ppid, pgrp, utime, stime.
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return ProcInfo(pid, int(fields[1]), int(fields[2]), comm, cpu)


def _all_procs() -> list[ProcInfo]:
    result = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _read_stat(int(name))
            if info is not None:
                result.append(info)
    return result


def process_tree(roots: Iterable[int]) -> list[ProcInfo]:
    """The processes `roots` and all their live descendants."""
    procs = _all_procs()
    children: dict[int, list[ProcInfo]] = {}
    by_pid = {p.pid: p for p in procs}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    result: list[ProcInfo] = []
    stack = [by_pid[r] for r in roots if r in by_pid]
    while stack:
        proc = stack.pop()
        result.append(proc)
        stack.extend(children.get(proc.pid, []))
    return result


def peak_rss_mib(roots: Iterable[int]) -> float:
    """The sum of VmHWM (peak resident set) over the process trees of `roots`."""
    total_kib = 0
    for proc in process_tree(roots):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


class Managed:
    """A child process in its own session, logging to a file, stopped on exit."""

    registry: list[Managed] = []

    def __init__(
        self,
        name: str,
        args: list[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
        pipes: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            args,
            env=env if env is not None else child_env(),
            cwd=ROOT,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log,
            stderr=self._log,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        Managed.registry.append(self)

    def running(self) -> bool:
        """True until the process exits."""
        return self.popen.returncode is None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The end of the process's stderr (and stdout, unless piped)."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(f"    {line}" for line in text[-lines:]) or "    (empty log)"

    def check_running(self) -> None:
        """Raises BenchError with the log if the process has exited."""
        if not self.running():
            raise BenchError(
                f"{self.name} exited with code {self.popen.returncode}; log {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the process, SIGKILL to its group after `timeout`; then
        SIGKILL to anything left in its group (its own children)."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(10)
        # The group id stays reserved while any member lives, so everything
        # still in it was started by this process.
        for proc in _all_procs():
            if proc.pgid == self.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()
        with contextlib.suppress(ValueError):
            Managed.registry.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        """Stops every process still registered, newest first."""
        for proc in reversed(list(cls.registry)):
            try:
                proc.stop(timeout=5)
            except Exception as err:  # keep cleaning up the rest
                print(f"bench: could not stop {proc.name}: {err}", file=sys.stderr)


@contextlib.contextmanager
def started(proc: Managed) -> Iterator[Managed]:
    """Stops `proc` when the block exits, however it exits."""
    try:
        yield proc
    finally:
        proc.stop()


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: no ASTER_* or proxy variables, plus `extra`."""
    drop = ("ASTER_", "HTTP_PROXY", "HTTPS_PROXY", "GRPC_PROXY", "ALL_PROXY", "NO_PROXY")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop)}
    env.update(extra)
    return env


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports of 127.0.0.1 that nothing listens on now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


# --------------------------------------------------------------------------
# Readiness


def wait_grpc_healthy(proc: Managed, port: int, timeout: float = READY_TIMEOUT_S) -> None:
    """Waits until the server's overall health is SERVING."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with grpc.insecure_channel(f"{HOST}:{port}", options=GRPC_OPTIONS) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            proc.check_running()
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as err:
                last = f"{err.code().name}: {err.details()}"
            time.sleep(0.2)
    raise BenchError(
        f"{proc.name} not SERVING on {HOST}:{port} after {timeout:.0f}s (last: {last}); "
        f"log {proc.log_path}:\n{proc.log_tail()}"
    )


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of GET `url` (no proxies)."""
    try:
        with _OPENER.open(url, timeout=timeout) as reply:
            return int(reply.status), bytes(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_http_ok(proc: Managed, url: str, timeout: float = READY_TIMEOUT_S) -> bytes:
    """Waits until GET `url` answers 200; returns the body."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        proc.check_running()
        try:
            status, body = http_get(url)
            if status == 200:
                return body
            last = f"HTTP {status}: {body[:200]!r}"
        except OSError as err:
            last = str(err)
        time.sleep(0.2)
    raise BenchError(
        f"{proc.name}: GET {url} not 200 after {timeout:.0f}s (last: {last}); "
        f"log {proc.log_path}:\n{proc.log_tail()}"
    )


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of sorted values (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


REDIS_URL = os.environ.get("ASTER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def aster_env(ports: dict[str, int], data_dir: Path, workers: int) -> dict[str, str]:
    """The environment of `aster serve` / `aster edge` for one stack."""
    return child_env(
        ASTER_GRPC_HOST=HOST,
        ASTER_HTTP_HOST=HOST,
        ASTER_GRPC_PORT=str(ports["grpc"]),
        ASTER_HTTP_PORT=str(ports["http"]),
        ASTER_METRICS_PORT=str(ports["metrics"]),
        ASTER_METRICS_HOST=HOST,
        ASTER_ENVOY_ADMIN_PORT=str(ports["admin"]),
        ASTER_DATA_DIR=str(data_dir),
        ASTER_LOG_LEVEL="warning",
        ASTER_WORKERS=str(workers),
        # Several workers share run streams through Redis (required).
        **({"ASTER_REDIS_URL": REDIS_URL} if workers > 1 else {}),
        ASTER_SHUTDOWN_GRACE_S="2",
    )


def log(message: str) -> None:
    """A time-stamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> list[str]:
    """What the numbers were measured on."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    envoy = "not found"
    with contextlib.suppress(Exception):
        from aster.server.edge.runner import envoy_binary

        out = subprocess.run(
            [envoy_binary(), "--version"], capture_output=True, text=True, timeout=20
        ).stdout
        found = re.search(r"/(\d+\.\d+\.\d+)/", out)
        envoy = found.group(1) if found else out.strip()[:80]
    wrk = shutil.which("wrk")
    wrk_version = "not found"
    if wrk:
        done = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=20)
        wrk_version = (done.stdout or done.stderr).split("[")[0].strip()
    load = Path("/proc/loadavg").read_text().split()[:3]
    packages = []
    for name in ("fastapi", "uvicorn", "sqlalchemy", "aiosqlite", "uvloop", "httptools"):
        try:
            packages.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            packages.append(f"no {name}")
    return [
        f"- CPUs: {NCPU} x {model}",
        f"- Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"Envoy {envoy}, {wrk_version}",
        f"- {', '.join(packages)}",
        f"- load average before the run: {' '.join(load)}",
    ]


def interrupt(signum: int, _frame: FrameType | None) -> None:
    """Signal handler: turns SIGTERM/SIGHUP (and SIGINT) into KeyboardInterrupt."""
    raise KeyboardInterrupt(f"signal {signum}")


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def emit(report: list[str], output: Path | None) -> None:
    """Prints the report's lines and, with `output`, writes them there too."""
    text = "\n".join(report) + "\n"
    print(text)
    if output:
        output.write_text(text)


def run_bench(
    prefix: str,
    measure: Callable[[Path], list[str]],
    *,
    output: Path | None = None,
    keep: bool = False,
    late_report: Callable[[int], list[str]] | None = None,
) -> int:
    """Runs `measure(work)` in a fresh temporary directory and prints its report;
    returns the exit code (0, 1 after an error, 130 when interrupted).

    Every process started through `Managed` is stopped however the run ends,
    including on Ctrl-C, SIGTERM or SIGHUP. `late_report(code)`, if given, runs
    after that and its lines (if any) are printed too: what was measured before
    an error. The directory is removed unless `keep` or the run failed.
    """
    # Installed explicitly: a shell that starts us in the background leaves
    # SIGINT ignored, and Python then keeps it that way.
    for signum in SIGNALS:
        signal.signal(signum, interrupt)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    code = 0
    try:
        report = measure(work)
        if report:
            emit(report, output)
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping processes", file=sys.stderr)
        code = 130
    except BenchError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        code = 1
    except Exception:
        traceback.print_exc()
        code = 1
    finally:
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        Managed.stop_all()
        if late_report is not None:
            late = late_report(code)
            if late:
                emit(late, output)
        if keep or code == 1:
            print(f"bench: logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return code


@contextlib.contextmanager
def aster_server(
    work: Path, database_url: str = "", *, name: str = "server", **env: str
) -> Iterator[int]:
    """One fresh `aster serve` (one worker, its data dir in `work`, the
    database of `database_url` or SQLite there, `env` on top), SERVING when the
    block starts and stopped when it ends; yields its gRPC port."""
    ports = dict(zip(["grpc", "http", "metrics", "admin"], free_ports(4), strict=True))
    environment = aster_env(ports, work / "data", 1)
    environment.update(env)
    if database_url:
        environment["ASTER_DATABASE_URL"] = database_url
    server = Managed(name, [PYTHON, "-m", "aster.server.cli", "serve"], work, environment)
    with started(server):
        wait_grpc_healthy(server, ports["grpc"])
        yield ports["grpc"]
