"""Streaming Chat: events/s, per-event latency and idle-stream memory, Aster
against a bare grpc.aio server.

Cases, each loaded from separate processes on 127.0.0.1 (bench/stream_load.py):

  (a) bench/baselines/bare_stream.py: grpc.aio streaming the events of one
      recorded Aster chat, pre-built, as fast as it can;
  (b) `aster serve`, AgentService/Chat over gRPC, an agent on the scripted
      provider with a --words word script and token_delay_ms 0;
  (c) `aster edge` (Envoy) in front of (b): POST /v1/agents/{id}/chat as SSE.

Each runs with 1 stream and with --streams concurrent streams, closed loop;
(b) and (c) also with --paced-streams streams of an agent that waits
--paced-delay-ms before each word (latency below saturation). (b) and (c)
each get a fresh server. Then the memory of idle streams: a fresh
`aster serve` (and the bare server) holding --idle-streams Chat calls whose
first word never comes. Prints markdown tables. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import subprocess
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from baselines.bare_stream import HOLD, write_events
from google.protobuf import struct_pb2
from harness import (
    BENCH,
    GRPC_OPTIONS,
    HOST,
    NCPU,
    PYTHON,
    READY_TIMEOUT_S,
    BenchError,
    Managed,
    aster_env,
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
from unary import (
    _cpu_by_process,
    _cpu_delta,
    _read_line,
    _sleep_until,
    machine_busy_s,
)

from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2

CASE_TITLES = {
    "a": "(a) bare grpc.aio stream, pre-built events",
    "b": "(b) Aster Chat, gRPC",
    "c": "(c) Aster Chat, SSE via Envoy",
}
IDLE_TITLES = {"a": "(a) bare grpc.aio, held call", "b": "(b) Aster Chat, run waiting"}
# The idle agent's first word would come after this long.
IDLE_DELAY_MS = 3_600_000
DRAIN_TIMEOUT_S = 60.0
STUCK_S = 8.0
# Between rows: the server counts as idle again under this CPU (% of a core).
SETTLE_PCT = 15.0
SETTLE_LIMIT_S = 90.0
WARMUP_STREAMS = 20
MAX_CONCURRENT_RPCS = 1_000_000


# --------------------------------------------------------------------------
# Memory


def rss_mib(roots: list[int], key: str = "VmRSS") -> float:
    """The sum of `key` (VmRSS: now; VmHWM: peak) over the process trees of `roots`."""
    total = 0
    for proc in process_tree(roots):
        try:
            text = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(f"{key}:"):
                total += int(line.split()[1])
    return total / 1024


def server_cpu_s(roots: list[int]) -> float:
    """CPU seconds used so far by the process trees of `roots`."""
    return sum(p.cpu_s for p in process_tree(roots))


# --------------------------------------------------------------------------
# Streaming load


@dataclass
class Measurement:
    """One closed-loop streaming run against one server."""

    case: str
    streams: int
    seconds: float
    events: int
    completed: int
    bad_streams: int
    gaps: int
    errors: dict[str, int]
    problems: dict[str, int]  # why streams were not whole
    latencies_s: list[float]
    client_cpu_s: list[float]  # per client process
    server_cpu: dict[str, float]  # process label -> CPU seconds in the window
    machine_cpu_s: float
    rss_mib: float = 0.0
    delay_ms: int = 0  # the scripted provider's word delay; 0: as fast as it can
    notes: list[str] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        """Events received per second."""
        return self.events / self.seconds

    def latency_ms(self, pct: float) -> float:
        """A percentile of the per-event latency, in milliseconds."""
        return 1000 * percentile(self.latencies_s, pct)

    @property
    def client_core_pcts(self) -> list[float]:
        """CPU of each client process, in % of one core."""
        return [100 * cpu / self.seconds for cpu in self.client_cpu_s]

    @property
    def server_cpu_pct(self) -> float:
        """Server-side CPU in % of one core."""
        return 100 * sum(self.server_cpu.values()) / self.seconds

    @property
    def others_cpu_pct(self) -> float:
        """CPU of everything else on the machine, in % of one core."""
        mine = sum(self.client_cpu_s) + sum(self.server_cpu.values())
        return 100 * max(0.0, self.machine_cpu_s - mine) / self.seconds

    @property
    def server_us_per_event(self) -> float:
        """Server-side CPU microseconds per event received."""
        return 1e6 * sum(self.server_cpu.values()) / self.events if self.events else 0.0


def stream_load(
    case: str,
    streams: int,
    target: list[str],
    expect_events: int,
    args: argparse.Namespace,
    server_roots: list[int],
    work: Path,
) -> Measurement:
    """bench/stream_load.py with `streams` streams spread over client processes."""
    procs = 1 if streams == 1 else min(args.procs, streams)
    label = f"{case}-{streams}"
    clients: list[Managed] = []
    outs: list[Path] = []
    try:
        for i in range(procs):
            share = streams // procs + (1 if i < streams % procs else 0)
            out = work / f"{label}-latencies-{i}.bin"
            outs.append(out)
            clients.append(
                Managed(
                    f"{label}-client-{i}",
                    [
                        PYTHON,
                        str(BENCH / "stream_load.py"),
                        *target,
                        f"--concurrency={share}",
                        f"--channels={min(args.channels, share)}",
                        f"--expect-events={expect_events}",
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
        deadline = time.monotonic() + 60
        for client in clients:
            assert client.popen.stdout is not None
            results.append(json.loads(_read_line(client, client.popen.stdout, deadline)))
    finally:
        for client in clients:
            client.stop(timeout=10)
    latencies = array("d")
    for out in outs:
        latencies.frombytes(out.read_bytes())
    errors: dict[str, int] = {}
    problems: dict[str, int] = {}
    for result in results:
        for why, count in result["problems"].items():
            problems[why] = problems.get(why, 0) + count
        for code, count in result["errors"].items():
            errors[code] = errors.get(code, 0) + count
        if result["late"]:
            print(f"bench: warning: a {label} client started after the window", file=sys.stderr)
    return Measurement(
        case=case,
        streams=streams,
        seconds=end - start,
        events=sum(r["events"] for r in results),
        completed=sum(r["streams"] for r in results),
        bad_streams=sum(r["bad_streams"] for r in results),
        gaps=sum(r["gaps"] for r in results),
        errors=errors,
        problems=problems,
        latencies_s=sorted(latencies),
        client_cpu_s=[r["cpu_s"] for r in results],
        server_cpu=_cpu_delta(cpu_before, cpu_after),
        machine_cpu_s=busy_after - busy_before,
    )


def _finish(result: Measurement, roots: list[int], own: list[int] | None = None) -> Measurement:
    result.rss_mib = peak_rss_mib(roots)
    busy = sorted(result.server_cpu.items(), key=lambda kv: -kv[1])
    parts = [
        f"{name.split('[')[0]} {100 * cpu / result.seconds:.0f}%"
        for name, cpu in busy
        if cpu / result.seconds >= 0.02
    ]
    if parts:
        result.notes.append(f"server CPU by process (% of one core): {', '.join(parts)}")
    if own is not None:
        mine = peak_rss_mib(own)
        result.notes.append(
            f"peak RSS: Aster {mine:.0f} MiB + Envoy {result.rss_mib - mine:.0f} MiB"
        )
    return result


def settle(roots: list[int], limit_s: float = SETTLE_LIMIT_S) -> float:
    """Waits until the server's CPU falls under SETTLE_PCT of a core over one
    second (it has worked off what the last row left queued); returns the
    seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < limit_s:
        if _settled_cpu_pct(roots, 1.0) < SETTLE_PCT:
            break
    return time.monotonic() - began


def _after_row(result: Measurement, roots: list[int]) -> None:
    """Lets the server finish the last row's leftovers before the next row."""
    waited = settle(roots)
    if waited >= 2:
        busy = waited >= SETTLE_LIMIT_S
        result.notes.append(
            f"after the window the server stayed busy {'over ' if busy else ''}{waited:.0f} s "
            "(working off queued events and cancelled runs)"
        )
        log(f"  the server needed {waited:.0f} s to settle")


def _summary(r: Measurement) -> str:
    cores = "/".join(f"{c:.0f}" for c in r.client_core_pcts)
    return (
        f"{r.events_per_s:,.0f} events/s, {r.completed / r.seconds:,.1f} streams/s, "
        f"latency p50 {r.latency_ms(50):.2f} ms p99 {r.latency_ms(99):.2f} ms, "
        f"client CPU {cores}% of a core, server {r.server_cpu_pct:.0f}%, "
        f"others {r.others_cpu_pct:.0f}%"
        + (f", errors {r.errors}" if r.errors else "")
        + (f", streams not whole {r.problems}" if r.problems else "")
    )


# --------------------------------------------------------------------------
# Servers


def stack_env(ports: dict[str, int], data_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    """The environment of `aster serve` and `aster edge` (one worker)."""
    env = aster_env(ports, data_dir, 1)
    env["ASTER_RUN_TIMEOUT_S"] = str(args.run_timeout)
    # No cap on concurrent runs (quota) or calls: the point is to find the
    # machine's limits, not the configured ones.
    env["ASTER_QUOTA_MAX_CONCURRENT_RUNS"] = "0"
    env["ASTER_MAX_CONCURRENT_RPCS"] = str(MAX_CONCURRENT_RPCS)
    return env


def start_aster(
    name: str, work: Path, data_dir: Path, args: argparse.Namespace
) -> tuple[Managed, dict[str, int], dict[str, str]]:
    """`aster serve` on free ports, once healthy."""
    ports = dict(zip(("grpc", "http", "metrics", "admin"), free_ports(4), strict=True))
    env = stack_env(ports, data_dir, args)
    log(f"starting aster serve on {HOST}:{ports['grpc']}")
    server = Managed(name, [PYTHON, "-m", "aster.server.cli", "serve"], work, env)
    try:
        wait_grpc_healthy(server, ports["grpc"])
    except BaseException:
        server.stop()
        raise
    return server, ports, env


def create_scripted_agent(port: int, name: str, text: str, delay_ms: int) -> str:
    """A scripted agent that answers `text` word by word; returns its id."""
    params = struct_pb2.Struct()
    params.update({"script": [{"text": text}], "token_delay_ms": delay_ms})
    agent = agent_pb2.Agent(
        display_name=name, model=agent_pb2.ModelConfig(provider="scripted", params=params)
    )
    with grpc.insecure_channel(f"{HOST}:{port}", options=GRPC_OPTIONS) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        created = stub.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent), timeout=10)
        return str(created.id)


def record_chat(port: int, agent_id: str) -> list[run_pb2.ChatEvent]:
    """The events of one complete Chat."""
    with grpc.insecure_channel(f"{HOST}:{port}", options=GRPC_OPTIONS) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.ChatRequest(agent_id=agent_id, message="go")
        events = list(stub.Chat(request, timeout=60))
    if not events or events[-1].run_finished.status != run_pb2.RUN_STATUS_COMPLETED:
        raise BenchError(f"the recorded chat did not complete: {events[-1:]}")
    return events


def active_runs(port: int, agent_id: str) -> int:
    """The agent's runs that are QUEUED or RUNNING."""
    with grpc.insecure_channel(f"{HOST}:{port}", options=GRPC_OPTIONS) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        status = stub.GetAgentStatus(agent_pb2.GetAgentStatusRequest(id=agent_id), timeout=30)
        return int(status.active_runs)


def runs_by_status(port: int, agent_id: str) -> dict[str, int]:
    """How many runs of the agent ended in each status."""
    with grpc.insecure_channel(f"{HOST}:{port}", options=GRPC_OPTIONS) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        stats = stub.GetAgentStats(agent_pb2.GetAgentStatsRequest(id=agent_id), timeout=30)
        return {k.removeprefix("RUN_STATUS_"): v for k, v in stats.runs_by_status.items() if v}


def wait_drained(port: int, agent_id: str, timeout: float = DRAIN_TIMEOUT_S) -> tuple[int, float]:
    """Waits until the agent has no active run, or their number stopped
    falling for STUCK_S; returns (active runs left, seconds waited)."""
    began = time.monotonic()
    left, last_change, previous = -1, began, -1
    while time.monotonic() - began < timeout:
        try:
            left = active_runs(port, agent_id)
        except grpc.RpcError as err:
            log(f"GetAgentStatus failed: {err.code().name}")
        if left == 0:
            break
        if left != previous:
            previous, last_change = left, time.monotonic()
        elif time.monotonic() - last_change >= STUCK_S:
            break  # these runs are not going to end
        time.sleep(0.5)
    return left, time.monotonic() - began


def _plan(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(word delay ms, streams) of each Aster row, lightest first: a row that
    overloads the server leaves work behind (queued events, runs that go on
    or are executed again after their clients left), so it comes last."""
    plan = [(0, streams) for streams in args.streams]
    if args.paced_delay_ms > 0:
        plan += [(args.paced_delay_ms, streams) for streams in args.paced_streams]

    def demand(row: tuple[int, int]) -> float:
        """Events/s the row asks for (a zero delay asks for as many as possible)."""
        delay, streams = row
        return streams * (1000 / delay if delay else 1e6)

    return sorted(plan, key=demand)


def run_aster(
    case: str, args: argparse.Namespace, work: Path
) -> tuple[list[Measurement], list[run_pb2.ChatEvent]]:
    """Case (b) or (c) on a fresh server and data dir; returns the rows and
    one recorded chat."""
    rows: list[Measurement] = []
    server, ports, env = start_aster(f"aster-serve-{case}", work, work / f"data-{case}", args)
    with started(server):
        text = " ".join(f"w{i}" for i in range(args.words))
        agents = {0: create_scripted_agent(ports["grpc"], "bench fast", text, 0)}
        events = record_chat(ports["grpc"], agents[0])
        log(f"agent {agents[0]}: one chat = {len(events)} events")
        expect = {0: len(events)}
        if args.paced_delay_ms > 0:
            paced = " ".join(f"w{i}" for i in range(args.paced_words))
            delay = args.paced_delay_ms
            agents[delay] = create_scripted_agent(ports["grpc"], "bench paced", paced, delay)
            expect[delay] = len(events) - args.words + args.paced_words

        def load(delay: int, streams: int, target: list[str], roots: list[int]) -> None:
            what = f"{streams} stream(s)" + (f", a word every {delay} ms" if delay else "")
            log(f"{CASE_TITLES[case]}, {what}")
            result = stream_load(case, streams, target, expect[delay], args, roots, work)
            result.delay_ms = delay
            rows.append(_finish(result, roots, None if len(roots) == 1 else roots[:1]))
            log(f"({case}) {_summary(result)}")
            _after_row(result, roots)

        if case == "b":
            for delay, streams in _plan(args):
                target = [
                    "--mode=grpc",
                    f"--target={HOST}:{ports['grpc']}",
                    f"--agent-id={agents[delay]}",
                ]
                load(delay, streams, target, [server.pid])
                server.check_running()
        else:
            log(f"starting aster edge (Envoy) on {HOST}:{ports['http']}")
            edge = Managed("aster-edge", [PYTHON, "-m", "aster.server.cli", "edge"], work, env)
            with started(edge):
                base = f"http://{HOST}:{ports['http']}/v1/agents"
                wait_http_ok(edge, f"{base}/{agents[0]}")
                for delay, streams in _plan(args):
                    sse = ["--mode=sse", f"--url={base}/{agents[delay]}/chat"]
                    load(delay, streams, sse, [server.pid, edge.pid])
                    server.check_running()
                    edge.check_running()
    return rows, events


def record_only(args: argparse.Namespace, work: Path) -> list[run_pb2.ChatEvent]:
    """One chat of the --words script, recorded on a fresh server."""
    server, ports, _env = start_aster("aster-record", work, work / "data-record", args)
    with started(server):
        text = " ".join(f"w{i}" for i in range(args.words))
        return record_chat(ports["grpc"], create_scripted_agent(ports["grpc"], "rec", text, 0))


def start_bare(work: Path, events_file: Path | None) -> tuple[Managed, int]:
    """The bare streaming server, once healthy."""
    (port,) = free_ports(1)
    extra = [f"--events-file={events_file}"] if events_file else []
    log(f"starting bare grpc.aio streaming server on {HOST}:{port}")
    server = Managed(
        "bare-stream",
        [
            PYTHON,
            str(BENCH / "baselines" / "bare_stream.py"),
            f"--host={HOST}",
            f"--port={port}",
            *extra,
        ],
        work,
    )
    try:
        wait_grpc_healthy(server, port)
    except BaseException:
        server.stop()
        raise
    return server, port


def run_bare(
    args: argparse.Namespace, work: Path, events_file: Path, count: int
) -> list[Measurement]:
    """Case (a)."""
    rows = []
    server, port = start_bare(work, events_file)
    with started(server):
        target = ["--mode=grpc", f"--target={HOST}:{port}"]
        for streams in args.streams:
            log(f"(a) bare grpc.aio stream, {streams} stream(s)")
            result = stream_load("a", streams, target, count, args, [server.pid], work)
            server.check_running()
            rows.append(_finish(result, [server.pid]))
            log(f"(a) {_summary(result)}")
            _after_row(result, [server.pid])
    return rows


# --------------------------------------------------------------------------
# Idle streams


@dataclass
class IdleStep:
    """The server holding one number of idle streams."""

    asked: int
    report: dict[str, Any]  # the load process's last line for the step
    rss_mib: float  # VmRSS once the step settled
    hwm_mib: float  # VmHWM (peak) at the same moment
    cpu_pct: float  # server CPU, % of one core, while the streams sat idle

    @property
    def open(self) -> int:
        """Streams that received their first event and are still open."""
        return int(self.report["open"])


@dataclass
class IdleResult:
    """One server's idle-stream figures."""

    case: str
    idle_rss_mib: float
    idle_cpu_pct: float
    steps: list[IdleStep] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class IdleLoader:
    """bench/stream_load.py --mode=idle, driven line by line."""

    def __init__(self, name: str, target: list[str], args: argparse.Namespace, work: Path):
        self.proc = Managed(
            name,
            [
                PYTHON,
                str(BENCH / "stream_load.py"),
                "--mode=idle",
                *target,
                f"--channels={args.idle_channels}",
                f"--open-concurrency={args.open_concurrency}",
            ],
            work,
            pipes=True,
        )
        # A thread reads the output: select() on a buffered pipe misses lines
        # that are already in the buffer, and this process prints many.
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        line = self._line(READY_TIMEOUT_S)
        if line != "ready":
            raise BenchError(f"{name}: expected 'ready', got {line!r}")

    def quit(self) -> None:
        """Asks the process to exit and waits for it."""
        assert self.proc.popen.stdin is not None
        self.proc.popen.stdin.write(b"quit\n")
        self.proc.popen.stdin.flush()
        try:
            self.proc.popen.wait(30)
        except subprocess.TimeoutExpired:
            log(f"{self.proc.name} did not exit; stopping it")

    def _read(self) -> None:
        stdout = self.proc.popen.stdout
        assert stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for raw in stdout:
                self._lines.put(raw.decode().strip())
        self._lines.put(None)

    def _line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                self.proc.check_running()
                if time.monotonic() >= deadline:
                    raise BenchError(
                        f"{self.proc.name}: no answer in {timeout:.0f} s; log:\n"
                        f"{self.proc.log_tail()}"
                    ) from None
                continue
            if line is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.popen.wait(5)
                raise BenchError(
                    f"{self.proc.name} closed its output (code {self.proc.popen.returncode}); "
                    f"log:\n{self.proc.log_tail()}"
                )
            return line

    def command(self, text: str, timeout: float) -> dict[str, Any]:
        """Sends one command; returns its final JSON line, logging progress."""
        assert self.proc.popen.stdin is not None
        self.proc.popen.stdin.write(f"{text}\n".encode())
        self.proc.popen.stdin.flush()
        last_log = 0.0
        history: list[tuple[float, int]] = []
        while True:
            report: dict[str, Any] = json.loads(self._line(timeout))
            if "progress" not in report:
                report["history"] = history
                return report
            history.append((float(report["t"]), int(report["open"])))
            if time.monotonic() - last_log >= 10:
                last_log = time.monotonic()
                log(
                    f"  {report['t']:.0f}s: {report['open']} open, {report['pending']} opening, "
                    f"errors {report['errors']}"
                )


def _shortfall(asked: int, step: IdleStep, report: dict[str, Any], stall_s: float) -> str:
    """Why an idle step stopped short, and how fast streams were still opening."""
    history: list[tuple[float, int]] = report["history"]
    recent = [(t, n) for t, n in history if t >= history[-1][0] - 10] if history else []
    span = recent[-1][0] - recent[0][0] if len(recent) > 1 else 0.0
    rate = (recent[-1][1] - recent[0][1]) / span if span > 0 else 0.0
    text = (
        f"{asked:,} not reached: {step.open:,} streams open after {report['seconds']:.0f} s "
        f"({report['gave_up']} more were still opening and were cancelled; errors "
        f"{report['errors'] or 'none'}); "
        f"opening rate over the last 10 s: {rate:.1f} streams/s"
    )
    if report.get("stalled"):
        text += f"; it gave up when no stream had opened for {stall_s:g} s"
    if rate > 0:
        rest = asked - step.open
        text += (
            f", so the other {rest:,} would take {rest / rate / 60:.1f} more minutes at that rate"
        )
    return text


def _settled_cpu_pct(roots: list[int], seconds: float) -> float:
    before = server_cpu_s(roots)
    time.sleep(seconds)
    return 100 * (server_cpu_s(roots) - before) / seconds


def idle_memory(case: str, args: argparse.Namespace, work: Path) -> IdleResult:
    """Holds --idle-streams idle Chat calls on a fresh server."""
    if case == "b":
        server, ports, _env = start_aster("aster-idle", work, work / "idle-data", args)
        port = ports["grpc"]
    else:
        server, port = start_bare(work, None)
    with started(server):
        roots = [server.pid]
        agent_id = ""
        message = HOLD
        if case == "b":
            agent_id = create_scripted_agent(port, "bench idle", "never arrives", IDLE_DELAY_MS)
            fast = create_scripted_agent(port, "bench warm-up", "warm up", 0)
            record_chat(port, fast)  # loads every lazily imported module
            message = "go"
        target = [f"--target={HOST}:{port}", f"--agent-id={agent_id}", f"--message={message}"]
        loader = IdleLoader(f"idle-{case}-client", target, args, work)
        with started(loader.proc):
            # Warm-up: a few idle streams opened and cancelled, so that the
            # baseline includes what the first streams allocate for good.
            loader.command(f"open {WARMUP_STREAMS} 60", 90)
            loader.command("cancel", 90)
            if case == "b":
                left, _ = wait_drained(port, agent_id)
                if left:
                    raise BenchError(f"{left} warm-up runs still active after the cancel")
            time.sleep(1)
            result = IdleResult(case, rss_mib(roots), _settled_cpu_pct(roots, args.idle_hold))
            log(f"idle ({case}): server RSS {result.idle_rss_mib:.0f} MiB with no stream")
            opening_ends = time.monotonic() + args.idle_budget
            for asked in args.idle_streams:
                budget = max(1.0, opening_ends - time.monotonic())
                log(f"idle ({case}): opening up to {asked:,} streams ({budget:.0f} s left)")
                report = loader.command(f"open {asked} {budget:.1f} {args.idle_stall}", budget + 60)
                server.check_running()
                time.sleep(1)
                cpu = _settled_cpu_pct(roots, args.idle_hold)
                step = IdleStep(asked, report, rss_mib(roots), rss_mib(roots, "VmHWM"), cpu)
                result.steps.append(step)
                log(
                    f"idle ({case}): {step.open:,} open after {report['seconds']:.0f} s "
                    f"({report['gave_up']} given up, errors {report['errors']}); "
                    f"server RSS {step.rss_mib:.0f} MiB (peak {step.hwm_mib:.0f}), "
                    f"server CPU {cpu:.0f}% of a core while idle"
                )
                if step.open < asked:
                    result.notes.append(_shortfall(asked, step, report, args.idle_stall))
                    break
            cancelled_at = time.monotonic()
            report = loader.command("cancel", 120)
            note = f"cancel: the client cancelled {report['cancelled']:,} calls"
            if case == "b":
                left, waited = wait_drained(port, agent_id)
                waited = time.monotonic() - cancelled_at
                by_status = runs_by_status(port, agent_id)
                note += (
                    f"; {waited:.1f} s later the server had {left} active run(s)"
                    + (f" (no change in the last {STUCK_S:g} s)" if left > 0 else "")
                    + f"; the idle agent's runs by status: {by_status}"
                )
            time.sleep(1)
            note += f"; server RSS after: {rss_mib(roots):.0f} MiB"
            if report["errors"] or report["unexpected_events"] or report["ended"]:
                note += (
                    f"; client saw errors {report['errors'] or 'none'}, events after the first "
                    f"{report['unexpected_events'] or 'none'}, streams ended by the server "
                    f"{report['ended']}"
                )
            result.notes.append(note)
            log(f"idle ({case}): {note}")
            loader.quit()
    return result


# --------------------------------------------------------------------------
# Report


def stream_table(rows: list[Measurement]) -> list[str]:
    """The streaming throughput and latency table."""
    lines = [
        "| case | word delay ms | streams | events/s | streams/s | latency p50 ms "
        "| latency p99 ms "
        "| bad streams / gaps / errors | client CPU % of a core (per process) "
        "| server CPU % of a core | others CPU % of a core | server CPU µs/event "
        "| server peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"a": 0, "b": 1, "c": 2}
    for r in sorted(rows, key=lambda r: (order[r.case], r.delay_ms, r.streams)):
        cores = ", ".join(f"{c:.0f}" for c in r.client_core_pcts)
        lines.append(
            f"| {CASE_TITLES[r.case]} | {r.delay_ms if r.case != 'a' else '-'} | {r.streams} "
            f"| {r.events_per_s:,.0f} "
            f"| {r.completed / r.seconds:,.1f} | {r.latency_ms(50):.2f} | {r.latency_ms(99):.2f} "
            f"| {r.bad_streams} / {r.gaps} / {sum(r.errors.values())} | {cores} "
            f"| {r.server_cpu_pct:.0f} | {r.others_cpu_pct:.0f} | {r.server_us_per_event:.0f} "
            f"| {r.rss_mib:.0f} |"
        )
    return lines


def idle_table(results: list[IdleResult]) -> list[str]:
    """The idle-stream memory table."""
    lines = [
        "| server | streams asked | streams open | seconds to open | server RSS MiB "
        "| server peak RSS MiB | KiB per stream | server CPU % of a core while idle "
        "| client RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        lines.append(
            f"| {IDLE_TITLES[result.case]} | 0 | 0 | | {result.idle_rss_mib:.0f} | | "
            f"| {result.idle_cpu_pct:.0f} | |"
        )
        for step in result.steps:
            per = 1024 * (step.rss_mib - result.idle_rss_mib) / step.open if step.open else 0.0
            lines.append(
                f"| {IDLE_TITLES[result.case]} | {step.asked:,} | {step.open:,} "
                f"| {step.report['seconds']:.0f} | {step.rss_mib:.0f} | {step.hwm_mib:.0f} "
                f"| {per:.1f} | {step.cpu_pct:.0f} | {step.report['rss_mib']:.0f} |"
            )
    return lines


def aster_version() -> str:
    """Which Aster code the servers run: the package's directory and its git state."""
    import aster.server

    where = Path(aster.server.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", str(where)],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"- Aster: {where} (not a git checkout)"
    state = "with uncommitted changes under server/" if dirty else "clean"
    return f"- Aster: {where}, git {commit} ({state})"


def run(args: argparse.Namespace, work: Path) -> list[str]:
    """Runs the selected parts; returns the report lines."""
    header = [*machine(), aster_version()]
    rows: list[Measurement] = []
    events: list[run_pb2.ChatEvent] = []
    for case in sorted(args.cases & set("bc")):
        aster_rows, events = run_aster(case, args, work)
        rows.extend(aster_rows)
    if "a" in args.cases and not events:
        events = record_only(args, work)  # (a) replays a chat recorded on Aster
    if "a" in args.cases:
        events_file = work / "chat-events.bin"
        write_events(events_file, events)
        rows.extend(run_bare(args, work, events_file, len(events)))
    idle: list[IdleResult] = []
    for case in sorted(args.idle_cases):
        idle.append(idle_memory(case, args, work))
    sizes = sorted(len(e.SerializeToString()) for e in events)
    lines = [
        "## Streaming Chat",
        "",
        *header,
        f"- load: {args.warmup} s warm-up, then {args.duration} s measured per row, closed "
        f"loop; 1 stream from 1 client process, {max(args.streams)} streams from "
        f"{min(args.procs, max(args.streams))} client processes ({args.channels} channels "
        "each for gRPC, one HTTP/1.1 connection per stream for SSE)",
        f"- one chat: {len(events)} events ({args.words} text deltas + run_started, "
        "text_message_start, text_message_end, usage, run_finished), "
        f"{sizes[len(sizes) // 2] if sizes else 0} bytes each (median serialized)",
        *(
            [
                f"- paced rows: the scripted provider sleeps {args.paced_delay_ms} ms before "
                f"each word ({1000 / args.paced_delay_ms:g} words/s per stream), "
                f"{args.paced_words} words per chat"
            ]
            if args.paced_delay_ms > 0
            else []
        ),
        "",
        *stream_table(rows),
        "",
        "latency: client receive time minus the event's create_time (stamped by the server; "
        "the same machine clock). CPU %: of one core (the machine has "
        f"{NCPU}); a client process near 100 is saturated. others: every process that is "
        "neither client nor server. Server peak RSS: VmHWM, Envoy included for (c).",
        "",
    ]
    for r in rows:
        details = list(r.notes)
        if r.errors:
            details.append(f"errors: {r.errors}")
        if r.problems:
            details.append(f"streams not whole: {r.problems}")
        if details:
            paced = f", {r.delay_ms} ms" if r.delay_ms else ""
            lines.append(f"- {r.case}{paced}, {r.streams} stream(s): " + "; ".join(details))
    if idle:
        lines += [
            "",
            f"Idle streams: {args.idle_channels} channels from one client process, at most "
            f"{args.open_concurrency} streams opening at once, {args.idle_budget} s to open "
            f"them all (every step together), a step given up when no stream opened for "
            f"{args.idle_stall:g} s; a stream counts as open once its "
            "first event (run_started) arrived. ASTER_RUN_TIMEOUT_S="
            f"{args.run_timeout:g}; the idle agent's first word would come after "
            f"{IDLE_DELAY_MS // 1000:,} s. KiB per stream: (RSS at N - RSS with no "
            f"stream) / N. CPU measured over {args.idle_hold:g} s once the step settled.",
            "",
            *idle_table(idle),
            "",
            *(f"- {r.case}: {note}" for r in idle for note in r.notes),
        ]
    return lines


# --------------------------------------------------------------------------
# Main


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=5, help="measured seconds per row")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per row")
    parser.add_argument("--streams", default="1,200", help="concurrent stream counts to run")
    parser.add_argument("--words", type=int, default=500, help="text deltas per chat")
    parser.add_argument(
        "--paced-delay-ms",
        type=int,
        default=20,
        help="word delay of the paced Aster rows (latency below saturation); 0 skips them",
    )
    parser.add_argument("--paced-streams", default="1,20", help="stream counts of the paced rows")
    parser.add_argument("--paced-words", type=int, default=100, help="words per paced chat")
    parser.add_argument("--procs", type=int, default=2, help="client processes (many streams)")
    parser.add_argument("--channels", type=int, default=4, help="gRPC channels per client")
    parser.add_argument("--cases", default="abc", help="which of the cases a, b, c to run")
    parser.add_argument(
        "--idle-streams", default="1000,10000", help="idle stream counts to hold, in order"
    )
    parser.add_argument(
        "--idle-cases", default="ab", help="idle memory for (a) bare and/or (b) Aster; '' skips"
    )
    parser.add_argument(
        "--idle-budget",
        type=int,
        default=120,
        help="seconds allowed to open the idle streams of all steps together",
    )
    parser.add_argument(
        "--idle-stall",
        type=float,
        default=20,
        help="give up an idle step when no stream opened for this many seconds",
    )
    parser.add_argument("--idle-hold", type=float, default=3, help="seconds of CPU measurement")
    parser.add_argument("--idle-channels", type=int, default=8, help="channels for idle streams")
    parser.add_argument(
        "--open-concurrency", type=int, default=100, help="idle streams opening at once"
    )
    parser.add_argument(
        "--run-timeout", type=float, default=21_600, help="ASTER_RUN_TIMEOUT_S, seconds"
    )
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.streams = _int_list(args.streams)
    args.idle_streams = _int_list(args.idle_streams)
    args.paced_streams = _int_list(args.paced_streams)
    args.cases = set(args.cases.lower())
    args.idle_cases = set(args.idle_cases.lower())
    if not args.cases <= set("abc") or not args.idle_cases <= set("ab"):
        parser.error("--cases takes letters among a, b, c; --idle-cases among a, b")
    if not args.streams or min(args.streams) < 1 or min(args.idle_streams, default=1) < 1:
        parser.error("--streams and --idle-streams take positive integers, e.g. 1,200")
    if min(args.duration, args.procs, args.channels, args.words, args.idle_channels) < 1:
        parser.error("--duration, --procs, --channels, --words, --idle-channels must be positive")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; stops every child process however the run ends."""
    args = parse_args(argv)
    return run_bench(
        "aster-bench-stream-", lambda work: run(args, work), output=args.output, keep=args.keep
    )


if __name__ == "__main__":
    sys.exit(main())
