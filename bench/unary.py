"""Unary GetAgent throughput and latency: Aster against its baselines.

Cases, each under load from separate processes on 127.0.0.1:

  (a) bench/baselines/bare_grpc.py: grpc.aio answering a constant Agent;
  (b) `aster serve`, GetAgent over gRPC (ASTER_WORKERS=1 and 2);
  (c) `aster edge` (Envoy) in front of (b), GET /v1/agents/{id} as REST;
  (d) bench/baselines/fastapi_app.py under uvicorn, the same row read
      through the same AgentRepository from the same SQLite file.

gRPC load comes from --procs processes (bench/grpc_load.py) with
--concurrency calls in flight each; REST load from wrk with
procs x concurrency connections. Prints a markdown table. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from harness import (
    BENCH,
    CLK_TCK,
    GRPC_OPTIONS,
    HOST,
    NCPU,
    PYTHON,
    READY_TIMEOUT_S,
    BenchError,
    Managed,
    ProcInfo,
    aster_env,
    child_env,
    free_ports,
    log,
    machine,
    peak_rss_mib,
    percentile,
    process_tree,
    run_bench,
    started,
    wait_grpc_healthy,
    wait_http_ok,
)

from aster.v1 import agent_pb2, agent_pb2_grpc

CASE_TITLES = {
    "a": "(a) bare grpc.aio, constant reply",
    "b": "(b) Aster GetAgent, gRPC",
    "c": "(c) Aster GetAgent, REST via Envoy",
    "d": "(d) FastAPI + uvicorn, same repository",
}


# --------------------------------------------------------------------------
# Load


@dataclass
class Measurement:
    """One load run against one server."""

    ok: int
    seconds: float
    latencies_s: list[float]
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    client_cpu_s: float
    server_cpu: dict[str, float]  # process label -> CPU seconds in the window
    machine_cpu_s: float  # busy CPU seconds of the whole machine in the window

    @property
    def rps(self) -> float:
        """Successful calls per second."""
        return self.ok / self.seconds

    @property
    def client_cpu_pct(self) -> float:
        """Client CPU as a share of the whole machine."""
        return 100 * self.client_cpu_s / self.seconds / NCPU

    @property
    def others_cpu_pct(self) -> float:
        """CPU of everything else on the machine (other jobs), as a share of it."""
        server = sum(self.server_cpu.values())
        others = max(0.0, self.machine_cpu_s - self.client_cpu_s - server)
        return 100 * others / self.seconds / NCPU

    @property
    def server_cpu_ms_per_call(self) -> float:
        """Server-side CPU milliseconds per successful call."""
        return 1000 * sum(self.server_cpu.values()) / self.ok if self.ok else 0.0

    @property
    def server_cpu_pct(self) -> float:
        """Server-side CPU as a share of the whole machine."""
        return 100 * sum(self.server_cpu.values()) / self.seconds / NCPU


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _cpu_by_process(roots: list[int]) -> dict[int, ProcInfo]:
    return {p.pid: p for p in process_tree(roots)}


def _cpu_delta(before: dict[int, ProcInfo], after: dict[int, ProcInfo]) -> dict[str, float]:
    result: dict[str, float] = {}
    for pid, proc in after.items():
        used = proc.cpu_s - (before[pid].cpu_s if pid in before else 0.0)
        result[f"{proc.comm}[{pid}]"] = used
    return result


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _read_line(proc: Managed, stream: IO[bytes], deadline: float) -> str:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{proc.name}: no answer in time; log:\n{proc.log_tail()}")
        ready, _, _ = select.select([stream], [], [], min(remaining, 0.5))
        if ready:
            line = stream.readline().decode()
            if not line:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(5)
                raise BenchError(
                    f"{proc.name} closed its output (code {proc.popen.returncode}); "
                    f"log {proc.log_path}:\n{proc.log_tail()}"
                )
            return line.strip()
        proc.check_running()


def grpc_load(
    port: int,
    agent_id: str,
    args: argparse.Namespace,
    server_roots: list[int],
    work: Path,
    label: str,
) -> Measurement:
    """bench/grpc_load.py in --procs processes against 127.0.0.1:`port`."""
    clients: list[Managed] = []
    outs: list[Path] = []
    try:
        for i in range(args.procs):
            out = work / f"{label}-latencies-{i}.bin"
            outs.append(out)
            clients.append(
                Managed(
                    f"{label}-client-{i}",
                    [
                        PYTHON,
                        str(BENCH / "grpc_load.py"),
                        f"--target={HOST}:{port}",
                        f"--agent-id={agent_id}",
                        f"--concurrency={args.concurrency}",
                        f"--channels={args.channels}",
                        f"--out={out}",
                    ],
                    work,
                    pipes=True,
                )
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        for client in clients:
            assert client.popen.stdout is not None
            line = _read_line(client, client.popen.stdout, deadline)
            if line != "ready":
                raise BenchError(f"{client.name}: expected 'ready', got {line!r}")
        start = time.monotonic() + args.warmup
        end = start + args.duration
        for client in clients:
            assert client.popen.stdin is not None
            client.popen.stdin.write(f"{start!r} {end!r}\n".encode())
            client.popen.stdin.close()
        _sleep_until(start)
        cpu_before, busy_before = _cpu_by_process(server_roots), machine_busy_s()
        _sleep_until(end)
        cpu_after, busy_after = _cpu_by_process(server_roots), machine_busy_s()
        results = []
        deadline = time.monotonic() + 30
        for client in clients:
            assert client.popen.stdout is not None
            results.append(json.loads(_read_line(client, client.popen.stdout, deadline)))
    finally:
        for client in clients:
            client.stop(timeout=10)
    latencies: list[float] = []
    for out in outs:
        values = array("d")
        values.frombytes(out.read_bytes())
        latencies.extend(values)
    latencies.sort()
    errors: dict[str, int] = {}
    for result in results:
        for code, count in result["errors"].items():
            errors[code] = errors.get(code, 0) + count
        if result["late"]:
            print(f"bench: warning: a {label} client started after the window", file=sys.stderr)
    return Measurement(
        ok=sum(r["ok"] for r in results),
        seconds=end - start,
        latencies_s=latencies,
        p50_ms=1000 * percentile(latencies, 50),
        p99_ms=1000 * percentile(latencies, 99),
        errors=errors,
        client_cpu_s=sum(r["cpu_s"] for r in results),
        server_cpu=_cpu_delta(cpu_before, cpu_after),
        machine_cpu_s=busy_after - busy_before,
    )


def _wait_with_rusage(proc: Managed, timeout: float) -> float:
    """Reaps `proc`; returns its CPU seconds (user + system, all threads)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.popen.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            raise BenchError(f"{proc.name} did not finish in {timeout:.0f}s")
        time.sleep(0.05)


def wrk_load(
    url: str, args: argparse.Namespace, server_roots: list[int], work: Path, label: str
) -> Measurement:
    """wrk with procs x concurrency connections against `url`."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk is not installed (Debian: apt-get install -y wrk)")
    connections = args.procs * args.concurrency
    threads = min(args.procs, connections)
    common = [wrk, f"-t{threads}", f"-c{connections}", "--timeout", "10s"]
    if args.warmup > 0:
        warm = Managed(f"{label}-wrk-warmup", [*common, f"-d{args.warmup}s", url], work)
        with started(warm):
            if warm.popen.wait(args.warmup + 30) != 0:
                raise BenchError(f"wrk warm-up failed:\n{warm.log_tail()}")
    cpu_before, busy_before = _cpu_by_process(server_roots), machine_busy_s()
    run = Managed(
        f"{label}-wrk",
        [*common, f"-d{args.duration}s", "--latency", "-s", str(BENCH / "wrk_report.lua"), url],
        work,
    )
    with started(run):
        client_cpu = _wait_with_rusage(run, args.duration + 30)
    cpu_after, busy_after = _cpu_by_process(server_roots), machine_busy_s()
    text = run.log_path.read_text(errors="replace")
    found = re.search(r"^WRK_JSON (.*)$", text, re.MULTILINE)
    if run.popen.returncode != 0 or found is None:
        raise BenchError(f"wrk failed (code {run.popen.returncode}):\n{run.log_tail()}")
    report: dict[str, Any] = json.loads(found.group(1))
    errors = {
        name: int(report[name])
        for name in ("connect", "read", "write", "status", "timeout")
        if report[name]
    }
    ok = int(report["requests"]) - int(report["status"])
    return Measurement(
        ok=ok,
        seconds=report["duration_us"] / 1e6,
        latencies_s=[],
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        errors={("non-2xx" if k == "status" else k): v for k, v in errors.items()},
        client_cpu_s=client_cpu,
        server_cpu=_cpu_delta(cpu_before, cpu_after),
        machine_cpu_s=busy_after - busy_before,
    )


# --------------------------------------------------------------------------
# Cases


@dataclass
class Row:
    """One line of the table."""

    case: str
    workers: int
    result: Measurement
    rss_mib: float
    notes: list[str] = field(default_factory=list)


def create_agent(port: int) -> agent_pb2.Agent:
    """Creates the agent the cases read; returns it as GetAgent answers it."""
    with grpc.insecure_channel(f"{HOST}:{port}", options=GRPC_OPTIONS) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        agent = agent_pb2.Agent(display_name="bench agent", description="read by bench/unary.py")
        created = stub.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent), timeout=10)
        return stub.GetAgent(agent_pb2.GetAgentRequest(id=created.id), timeout=10)


def check_agent(port: int, agent_id: str) -> None:
    """Fails unless GetAgent of `agent_id` works on `port`."""
    with grpc.insecure_channel(f"{HOST}:{port}", options=GRPC_OPTIONS) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        try:
            stub.GetAgent(agent_pb2.GetAgentRequest(id=agent_id), timeout=10)
        except grpc.RpcError as err:
            raise BenchError(f"GetAgent on port {port} failed: {err}") from None


def _cpu_notes(result: Measurement) -> list[str]:
    busy = sorted(result.server_cpu.items(), key=lambda kv: -kv[1])
    parts = [
        f"{name.split('[')[0]} {100 * cpu / result.seconds:.0f}%"
        for name, cpu in busy
        if cpu / result.seconds >= 0.02
    ]
    return [f"server CPU by process (% of one core): {', '.join(parts)}"] if parts else []


def _summary(row: Row) -> str:
    r = row.result
    return (
        f"{r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, "
        f"client CPU {r.client_cpu_pct:.0f}%, server CPU {r.server_cpu_pct:.0f}%, "
        f"others {r.others_cpu_pct:.0f}%" + (f", errors {r.errors}" if r.errors else "")
    )


def run_aster(
    workers: int,
    args: argparse.Namespace,
    data_dir: Path,
    work: Path,
    agent: agent_pb2.Agent | None,
) -> tuple[agent_pb2.Agent, list[Row]]:
    """Cases (b) and (c) with ASTER_WORKERS=`workers`."""
    ports = dict(zip(("grpc", "http", "metrics", "admin"), free_ports(4), strict=True))
    env = aster_env(ports, data_dir, workers)
    rows: list[Row] = []
    log(f"starting aster serve (workers={workers}) on {HOST}:{ports['grpc']}")
    server = Managed(
        f"aster-serve-w{workers}", [PYTHON, "-m", "aster.server.cli", "serve"], work, env
    )
    with started(server):
        wait_grpc_healthy(server, ports["grpc"])
        if agent is None:
            agent = create_agent(ports["grpc"])
            log(f"created agent {agent.id}")
        else:
            check_agent(ports["grpc"], agent.id)
        if "b" in args.cases:
            log(f"(b) gRPC load, workers={workers}")
            result = grpc_load(ports["grpc"], agent.id, args, [server.pid], work, f"b-w{workers}")
            server.check_running()
            rows.append(Row("b", workers, result, peak_rss_mib([server.pid]), _cpu_notes(result)))
            log(f"(b) {_summary(rows[-1])}")
        if "c" in args.cases:
            log(f"starting aster edge (Envoy) on {HOST}:{ports['http']}")
            edge = Managed(
                f"aster-edge-w{workers}", [PYTHON, "-m", "aster.server.cli", "edge"], work, env
            )
            with started(edge):
                url = f"http://{HOST}:{ports['http']}/v1/agents/{agent.id}"
                body = wait_http_ok(edge, url)
                if json.loads(body).get("id") != agent.id:
                    raise BenchError(f"the edge answered {body[:300]!r} for {url}")
                log(f"(c) REST load through Envoy, workers={workers}")
                result = wrk_load(url, args, [server.pid, edge.pid], work, f"c-w{workers}")
                server.check_running()
                edge.check_running()
                rss = peak_rss_mib([server.pid, edge.pid])
                notes = _cpu_notes(result)
                own = peak_rss_mib([server.pid])
                notes.append(f"peak RSS: Aster {own:.0f} MiB + Envoy {rss - own:.0f} MiB")
                rows.append(Row("c", workers, result, rss, notes))
                log(f"(c) {_summary(rows[-1])}")
    return agent, rows


def run_bare(workers: int, args: argparse.Namespace, agent_file: Path, work: Path) -> Row:
    """Case (a)."""
    (port,) = free_ports(1)
    log(f"starting bare grpc.aio server (workers={workers}) on {HOST}:{port}")
    server = Managed(
        f"bare-grpc-w{workers}",
        [
            PYTHON,
            str(BENCH / "baselines" / "bare_grpc.py"),
            f"--host={HOST}",
            f"--port={port}",
            f"--workers={workers}",
            f"--agent-file={agent_file}",
        ],
        work,
    )
    with started(server):
        wait_grpc_healthy(server, port)
        agent = agent_pb2.Agent.FromString(agent_file.read_bytes())
        check_agent(port, agent.id)
        log(f"(a) gRPC load, workers={workers}")
        result = grpc_load(port, agent.id, args, [server.pid], work, f"a-w{workers}")
        server.check_running()
        row = Row("a", workers, result, peak_rss_mib([server.pid]), _cpu_notes(result))
    log(f"(a) {_summary(row)}")
    return row


def run_fastapi(workers: int, args: argparse.Namespace, data_dir: Path, agent_id: str) -> Row:
    """Case (d) against the SQLite file that `aster serve` created."""
    db_path = (data_dir / "aster.db").resolve()
    if not db_path.exists():
        raise BenchError(f"{db_path} does not exist; case (d) needs case (b) or (c) first")
    (port,) = free_ports(1)
    work = data_dir.parent
    log(f"starting uvicorn (workers={workers}) on {HOST}:{port}")
    server = Managed(
        f"uvicorn-w{workers}",
        [
            PYTHON,
            "-m",
            "uvicorn",
            "--app-dir",
            str(BENCH / "baselines"),
            "fastapi_app:app",
            f"--host={HOST}",
            f"--port={port}",
            f"--workers={workers}",
            "--log-level=warning",
            "--no-access-log",
        ],
        work,
        child_env(ASTER_BENCH_DATABASE_URL=f"sqlite+aiosqlite:///{db_path}"),
    )
    with started(server):
        url = f"http://{HOST}:{port}/v1/agents/{agent_id}"
        wait_http_ok(server, url)
        log(f"(d) REST load, workers={workers}")
        result = wrk_load(url, args, [server.pid], work, f"d-w{workers}")
        server.check_running()
        row = Row("d", workers, result, peak_rss_mib([server.pid]), _cpu_notes(result))
    log(f"(d) {_summary(row)}")
    return row


# --------------------------------------------------------------------------
# Report


def table(rows: list[Row]) -> list[str]:
    """The markdown table; ratios are to (a) with the same number of workers."""
    bare = {row.workers: row.result.rps for row in rows if row.case == "a"}
    lines = [
        "| case | workers | req/s | p50 ms | p99 ms | ratio to (a) | errors "
        "| client CPU % | server CPU % | others CPU % | server CPU ms/call "
        "| server peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"a": 0, "b": 1, "c": 2, "d": 3}
    for row in sorted(rows, key=lambda r: (order[r.case], r.workers)):
        r = row.result
        base = bare.get(row.workers) or bare.get(1)
        ratio = f"{r.rps / base:.2f}" if base else "n/a"
        errors = sum(r.errors.values())
        lines.append(
            f"| {CASE_TITLES[row.case]} | {row.workers} | {r.rps:,.0f} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {ratio} | {errors} | {r.client_cpu_pct:.0f} "
            f"| {r.server_cpu_pct:.0f} | {r.others_cpu_pct:.0f} | {r.server_cpu_ms_per_call:.2f} "
            f"| {row.rss_mib:.0f} |"
        )
    return lines


def notes(rows: list[Row]) -> list[str]:
    """Per-case details under the table."""
    lines = []
    for row in rows:
        details = list(row.notes)
        if row.result.errors:
            details.append(f"errors: {row.result.errors}")
        if details:
            lines.append(f"- {row.case}, workers={row.workers}: " + "; ".join(details))
    return lines


# --------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per case")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per case")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="calls in flight per gRPC client process (wrk gets procs x concurrency connections)",
    )
    parser.add_argument("--procs", type=int, default=2, help="gRPC client processes")
    parser.add_argument(
        "--channels",
        type=int,
        default=4,
        help="channels (TCP connections) per gRPC client process; several let "
        "SO_REUSEPORT spread the load over the server's workers",
    )
    parser.add_argument("--workers", default="1,2", help="server worker counts to run")
    parser.add_argument("--cases", default="abcd", help="which of the cases a, b, c, d to run")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    args.cases = set(args.cases.lower())
    if not args.cases <= set("abcd") or not args.cases:
        parser.error("--cases takes letters among a, b, c, d")
    if min(args.duration, args.concurrency, args.procs, args.channels) < 1 or args.warmup < 0:
        parser.error("--duration, --concurrency, --procs and --channels must be positive")
    args.channels = min(args.channels, args.concurrency)
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers takes positive integers, e.g. 1,2")
    return args


def run(args: argparse.Namespace, work: Path) -> list[str]:
    """Runs the selected cases; returns the report lines."""
    header = machine()
    data_dir = work / "data"
    agent: agent_pb2.Agent | None = None
    rows: list[Row] = []
    # (b) and (c) first: they create the agent that (a) echoes and (d) reads.
    for workers in args.workers:
        agent, aster_rows = run_aster(workers, args, data_dir, work, agent)
        rows.extend(aster_rows)
    assert agent is not None
    agent_file = work / "agent.binpb"
    agent_file.write_bytes(agent.SerializeToString())
    if "a" in args.cases:
        for workers in args.workers:
            rows.append(run_bare(workers, args, agent_file, work))
    if "d" in args.cases:
        for workers in args.workers:
            rows.append(run_fastapi(workers, args, data_dir, agent.id))
    total = args.procs * args.concurrency
    return [
        "## Unary GetAgent",
        "",
        *header,
        f"- load: {args.warmup} s warm-up, then {args.duration} s measured per case; gRPC: "
        f"{args.procs} client processes x {args.concurrency} calls in flight over "
        f"{args.channels} channels each; REST: wrk -t{min(args.procs, total)} -c{total}",
        "",
        *table(rows),
        "",
        "ratio to (a): req/s over (a) with the same number of workers. CPU %: share of "
        f"the whole machine ({NCPU} cores) during the measured window; others: every "
        "process that is neither client nor server (other jobs on a shared machine). "
        "Server CPU ms/call: server-side CPU time per successful call. Server RSS: sum of "
        "VmHWM over the server's processes (Envoy included for (c)).",
        "",
        *notes(rows),
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point; stops every child process however the run ends."""
    args = parse_args(argv)
    return run_bench(
        "aster-bench-", lambda work: run(args, work), output=args.output, keep=args.keep
    )


if __name__ == "__main__":
    sys.exit(main())
