"""Run queue: Aster's run dispatch against procrastinate on one PostgreSQL,
then unary GetAgent through Envoy with 1, 2 and 3 replicas.

Everything runs on 127.0.0.1 against one PostgreSQL database created for the
run (`--database`, dropped at the end) and Redis. Queue cases, each a
warm-up, a burst of --jobs no-op jobs enqueued by --clients concurrent
callers, then --paced-jobs at --paced-rate (bench/queue_load.py):

  (a) Aster, dispatch: SendMessage to one `aster serve` replica, which
      admits the run and executes it at once;
  (b) Aster, poll: the same admission code in another process that never
      executes (the runs are stored QUEUED, held by nobody): the replica's
      queue poller (ASTER_QUEUE_POLL_S) leases and runs them;
  (c) procrastinate, LISTEN/NOTIFY: defer_async, and one worker
      (--worker-concurrency) woken by NOTIFY;
  (d) procrastinate, polling: the same worker with LISTEN/NOTIFY off,
      polling every ASTER_QUEUE_POLL_S, like Aster's poller.

Then (e): GET /v1/agents/{id} through `aster edge` (Envoy) balancing over
1, 2 and 3 replicas, loaded by wrk. Prints markdown tables; see
bench/README.md, section "Run queue".

This file is not named queue.py: run as a script, its directory comes first
on sys.path, and a bench/queue.py would replace the standard library's
`queue` module for every benchmark in bench/ (grpc imports it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import struct_pb2
from harness import (
    BENCH,
    GRPC_OPTIONS,
    HOST,
    NCPU,
    PYTHON,
    BenchError,
    Managed,
    _read_stat,
    child_env,
    free_ports,
    log,
    percentile,
    process_tree,
    run_bench,
    started,
    wait_grpc_healthy,
    wait_http_ok,
)
from unary import (
    Measurement,
    _cpu_notes,
    _read_line,
    machine_busy_s,
    wrk_load,
)

from aster.v1 import agent_pb2, agent_pb2_grpc

QUEUE_TITLES = {
    "a": "(a) Aster, admitting replica executes",
    "b": "(b) Aster, replica's poller",
    "c": "(c) procrastinate, LISTEN/NOTIFY",
    "d": "(d) procrastinate, polling",
}
LOAD = BENCH / "queue_load.py"
SCHEMA = "procrastinate"
BATCH_TIMEOUT_S = 180.0


# --------------------------------------------------------------------------
# PostgreSQL


def pg_admin(dsn: str, query: str, *params: Any) -> list[asyncpg.Record]:
    """The rows of one query on a fresh connection."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await conn.fetch(query, *params))
        finally:
            await conn.close()

    return asyncio.run(go())


class Db:
    """One connection to the bench database, kept for the whole run (the
    completion checks poll it; a new connection per check would add
    backends to the ones measured)."""

    def __init__(self, dsn: str) -> None:
        self._runner = asyncio.Runner()
        self._conn: asyncpg.Connection = self._runner.run(asyncpg.connect(dsn, timeout=10))
        self.pid = int(self._conn.get_server_pid())

    def fetch(self, query: str, *params: Any) -> list[asyncpg.Record]:
        return list(self._runner.run(self._conn.fetch(query, *params)))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._runner.run(self._conn.close(timeout=5))
        self._runner.close()


@contextlib.contextmanager
def bench_database(args: argparse.Namespace) -> Iterator[str]:
    """Creates the benchmark's database; stops every process and drops the
    database (and its connections) on exit."""
    name = args.database
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise BenchError(f"--database {name!r}: use lower-case letters, digits and _")
    if pg_admin(args.admin_dsn, "SELECT 1 FROM pg_database WHERE datname = $1", name):
        raise BenchError(
            f"database {name!r} already exists (left by an interrupted run?). Drop it with\n"
            f"    psql -h 127.0.0.1 -U postgres -d test -c 'DROP DATABASE {name} WITH (FORCE)'\n"
            "or pass another --database"
        )
    pg_admin(args.admin_dsn, f"CREATE DATABASE {name}")
    try:
        yield args.admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        # A second Ctrl-C must not leave the database behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        Managed.stop_all()
        try:
            pg_admin(args.admin_dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            log(f"dropped database {name}")
        except Exception as err:
            print(f"bench: could not drop database {name}: {err}", file=sys.stderr)


class PgSampler:
    """CPU of PostgreSQL's backends for one database, from /proc.

    A thread reads the postmaster's children every `interval` seconds and
    keeps the last CPU time seen of each backend whose process title names
    the database, so that connections opened and closed during the window
    count too (what a backend uses after its last reading is missed: a
    lower bound). Needs PostgreSQL on this machine; else reports nothing."""

    def __init__(self, database: str, db: Db, interval: float = 0.01) -> None:
        self._marker = f" {database} "
        self._exclude = {db.pid}
        own = _read_stat(db.pid)
        self.postmaster = own.ppid if own is not None else None
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset()

    def _reset(self) -> None:
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._ours: set[int] = set()
        self._others: set[int] = set()
        self._new: set[int] = set()

    @property
    def available(self) -> bool:
        return self.postmaster is not None

    def start(self) -> None:
        if not self.available:
            return
        self._reset()
        self._tick(initial=True)
        self._base = dict(self._last)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pg-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> tuple[float, int]:
        """CPU seconds of the database's backends since start(), and how
        many backends were born in between."""
        if self._thread is None:
            return 0.0, 0
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._tick()
        used = sum(cpu - self._base.get(pid, 0.0) for pid, cpu in self._last.items())
        return used, len(self._new)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._tick()

    def _tick(self, initial: bool = False) -> None:
        pm = self.postmaster
        try:
            children = Path(f"/proc/{pm}/task/{pm}/children").read_text().split()
        except OSError:
            return
        for item in children:
            pid = int(item)
            if pid in self._exclude or pid in self._others:
                continue
            if pid not in self._ours:
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if self._marker in title:
                    self._ours.add(pid)
                    if not initial:
                        self._new.add(pid)
                elif title.startswith("postgres:") and ("(" in title or "[local]" in title):
                    self._others.add(pid)  # a client of another database
                    continue
                else:
                    continue  # a background process, or a backend not yet named
            info = _read_stat(pid)
            if info is not None:
                self._last[pid] = info.cpu_s


def cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds so far of each process in the trees of `pids`."""
    return {p.pid: p.cpu_s for p in process_tree(pids)}


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings (a process born in between counts whole)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


# --------------------------------------------------------------------------
# Aster processes


@dataclass
class Replica:
    """One `aster serve` and its ports."""

    index: int
    ports: dict[str, int]
    proc: Managed

    @property
    def target(self) -> str:
        return f"{HOST}:{self.ports['grpc']}"


def aster_env(
    args: argparse.Namespace, database_url: str, ports: dict[str, int], data: Path
) -> dict[str, str]:
    """The environment of one replica (or of the edge, with ASTER_UPSTREAMS)."""
    return child_env(
        ASTER_DATABASE_URL=database_url,
        ASTER_REDIS_URL=args.redis_url,
        ASTER_AUTO_MIGRATE="false",
        ASTER_LOG_LEVEL="warning",
        ASTER_GRPC_HOST=HOST,
        ASTER_HTTP_HOST=HOST,
        ASTER_METRICS_HOST=HOST,
        ASTER_GRPC_PORT=str(ports["grpc"]),
        ASTER_HTTP_PORT=str(ports["http"]),
        ASTER_METRICS_PORT=str(ports["metrics"]),
        ASTER_ENVOY_ADMIN_PORT=str(ports["admin"]),
        ASTER_DATA_DIR=str(data),
        ASTER_QUEUE_POLL_S=str(args.poll_s),
        ASTER_QUOTA_MAX_CONCURRENT_RUNS="0",
        ASTER_RATE_LIMIT_RPS="1000000",
        ASTER_RATE_LIMIT_BURST="1000000",
        ASTER_SHUTDOWN_GRACE_S="2",
    )


def _ports() -> dict[str, int]:
    return dict(zip(("grpc", "http", "metrics", "admin"), free_ports(4), strict=True))


def migrate(args: argparse.Namespace, database_url: str, work: Path) -> None:
    """`aster db upgrade` on the bench database."""
    env = aster_env(args, database_url, _ports(), work / "migrate")
    done = subprocess.run(
        [PYTHON, "-m", "aster.server.cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise BenchError(f"aster db upgrade failed:\n{done.stdout}\n{done.stderr}")


def start_replica(index: int, args: argparse.Namespace, database_url: str, work: Path) -> Replica:
    ports = _ports()
    env = aster_env(args, database_url, ports, work / f"replica{index}")
    log(f"starting replica {index} on {HOST}:{ports['grpc']}")
    proc = Managed(f"replica{index}", [PYTHON, "-m", "aster.server.cli", "serve"], work, env)
    wait_grpc_healthy(proc, ports["grpc"])
    return Replica(index, ports, proc)


def create_agent(replica: Replica, name: str) -> str:
    """A scripted agent whose every run answers "ok"; returns its id."""
    params = struct_pb2.Struct()
    params.update({"script": [{"text": "ok"}]})
    agent = agent_pb2.Agent(
        display_name=name, model=agent_pb2.ModelConfig(provider="scripted", params=params)
    )
    with grpc.insecure_channel(replica.target, options=GRPC_OPTIONS) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        return stub.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent), timeout=10).id


# --------------------------------------------------------------------------
# Queue cases


@dataclass
class Batch:
    """What one batch of a queue case measured."""

    report: dict[str, Any]  # the enqueuer's JSON line
    window_s: float
    worker_cpu_s: float
    postgres_cpu_s: float | None
    new_backends: int
    machine_cpu_s: float
    driver_cpu_s: float  # this process: the /proc sampler and the completion checks


@dataclass
class QueueRow:
    """One line of the queue table."""

    case: str
    load: str
    batch: Batch
    ok: int
    errors: dict[str, int]
    done_s: float
    taken_ms: list[float]
    begins_ms: list[float]
    retried: int
    notes: list[str] = field(default_factory=list)

    def per_job_ms(self, seconds: float | None) -> str:
        if seconds is None:
            return "n/a"
        return f"{1000 * seconds / self.ok:.2f}" if self.ok else "n/a"


def _wait_done(what: str, done: Any, expected: int, procs: list[Managed]) -> None:
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    count = 0
    while time.monotonic() < deadline:
        count = done()
        if count >= expected:
            return
        for proc in procs:
            proc.check_running()
        time.sleep(0.05)
    raise BenchError(f"{what}: {count} of {expected} done after {BATCH_TIMEOUT_S:.0f}s")


def _send(proc: Managed, line: str) -> None:
    assert proc.popen.stdin is not None
    proc.popen.stdin.write(f"{line}\n".encode())
    proc.popen.stdin.flush()


def _expect(proc: Managed, expected: str, timeout: float = 60.0) -> None:
    assert proc.popen.stdout is not None
    line = _read_line(proc, proc.popen.stdout, time.monotonic() + timeout)
    if line != expected:
        raise BenchError(f"{proc.name}: expected {expected!r}, got {line!r}")


def run_batches(
    label: str,
    command: list[str],
    batches: list[tuple[str, int, float]],
    done: Any,
    worker_roots: list[int],
    others: list[Managed],
    ctx: Context,
) -> list[Batch]:
    """Runs one queue_load.py enqueuer through `batches` (target, count,
    rate), each after the previous one is done: done(target) counts the
    finished jobs of a target. The first batch is the warm-up."""
    args = [f"--batch={t},{n},{r:g}" for t, n, r in batches]
    loader = Managed(f"{label}-enqueue", [*command, *args], ctx.work, pipes=True)
    results = []
    with started(loader):
        assert loader.popen.stdout is not None
        _expect(loader, "ready")
        for target, _count, _rate in batches:
            worker_before = cpu_of(worker_roots)
            busy_before, driver_before = machine_busy_s(), time.process_time()
            ctx.sampler.start()
            began = time.monotonic()
            _send(loader, "go")
            report = json.loads(
                _read_line(loader, loader.popen.stdout, time.monotonic() + BATCH_TIMEOUT_S)
            )
            _wait_done(label, lambda t=target: done(t), report["ok"], [loader, *others])
            window = time.monotonic() - began
            postgres, new_backends = ctx.sampler.stop()
            results.append(
                Batch(
                    report=report,
                    window_s=window,
                    worker_cpu_s=cpu_used(worker_before, cpu_of(worker_roots)),
                    postgres_cpu_s=postgres if ctx.sampler.available else None,
                    new_backends=new_backends,
                    machine_cpu_s=machine_busy_s() - busy_before,
                    driver_cpu_s=time.process_time() - driver_before,
                )
            )
        _send(loader, "quit")
        assert loader.popen.stdin is not None
        loader.popen.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            loader.popen.wait(15)
    return results[1:]


def _plan(args: argparse.Namespace) -> list[tuple[str, int, float]]:
    """(name, count, rate) of the warm-up and the measured batches."""
    plan = [("warm", args.warmup_jobs, 0.0), ("burst", args.jobs, 0.0)]
    if args.paced_jobs:
        plan.append(("paced", args.paced_jobs, args.paced_rate))
    return plan


def _load_label(rate: float) -> str:
    return f"paced {rate:g}/s" if rate else "burst"


def _retried_note(case: str, row: QueueRow, rows: list[Any], created: str) -> None:
    """For a batch with rescued runs: the figures without them."""
    if not row.retried:
        return
    first = [r for r in rows if r["attempt"] == 1 and r["begins"]]
    if not first:
        return
    begins = sorted(1000 * (r["begins"] - r[created]) for r in first)
    done_s = max(r["ended"] for r in first) - row.batch.report["t0"]
    row.notes.append(
        f"{case} {row.load}: {row.retried} run(s) ran as attempt 2 after their lease "
        f"lapsed (see the reading); without them: {len(first) / done_s:,.0f} done/s, "
        f"begins p50 {ms(begins, 50)} ms, p99 {ms(begins, 99)} ms"
    )


def aster_case(
    case: str, args: argparse.Namespace, replica: Replica, ctx: Context
) -> list[QueueRow]:
    """(a) or (b): batches of no-op runs; latencies from the runs table."""
    plan = _plan(args)
    agents = {name: create_agent(replica, f"bench-{case}-{name}") for name, _, _ in plan}

    def done(agent_id: str) -> int:
        rows = ctx.db.fetch(
            "SELECT count(*) AS n FROM runs WHERE agent_id = $1"
            " AND status IN ('COMPLETED', 'FAILED', 'CANCELLED')",
            agent_id,
        )
        return int(rows[0]["n"])

    if case == "a":
        command = [PYTHON, str(LOAD), "send", f"--target={replica.target}"]
    else:
        command = [PYTHON, str(LOAD), "admit", f"--database-url={ctx.database_url}"]
    command.append(f"--clients={args.clients}")
    log(f"{case}: {_describe(plan)}")
    batches = run_batches(
        case,
        command,
        [(agents[name], count, rate) for name, count, rate in plan],
        done,
        [replica.proc.pid],
        [replica.proc],
        ctx,
    )
    result = []
    for (name, _count, rate), batch in zip(plan[1:], batches, strict=True):
        rows = ctx.db.fetch(
            "SELECT r.status, r.attempt,"
            " extract(epoch FROM r.create_time)::float8 AS created,"
            " extract(epoch FROM r.start_time)::float8 AS taken,"
            " extract(epoch FROM r.end_time)::float8 AS ended,"
            " (SELECT extract(epoch FROM e.create_time)::float8 FROM run_events e"
            "   WHERE e.run_id = r.id AND e.kind = 'run_started'"
            "   ORDER BY e.seq LIMIT 1) AS begins"
            " FROM runs r WHERE r.agent_id = $1",
            agents[name],
        )
        row = _queue_row(case, _load_label(rate), batch, rows, "COMPLETED")
        row.retried = sum(1 for r in rows if r["attempt"] > 1)
        _retried_note(case, row, rows, "created")
        result.append(row)
    return result


def _queue_row(case: str, load: str, batch: Batch, rows: list[Any], success: str) -> QueueRow:
    errors = dict(batch.report["errors"])
    failed = sum(1 for r in rows if r["status"] != success)
    if failed:
        errors[f"not {success}"] = failed
    return QueueRow(
        case=case,
        load=load,
        batch=batch,
        ok=len(rows) - failed,
        errors=errors,
        done_s=max(r["ended"] for r in rows) - batch.report["t0"],
        taken_ms=sorted(1000 * (r["taken"] - r["created"]) for r in rows if r["taken"]),
        begins_ms=sorted(1000 * (r["begins"] - r["created"]) for r in rows if r["begins"]),
        retried=0,
    )


def _describe(plan: list[tuple[str, int, float]]) -> str:
    return ", ".join(
        f"{name} {count}" + (f" at {rate:g}/s" if rate else "") for name, count, rate in plan
    )


def procrastinate_case(case: str, args: argparse.Namespace, ctx: Context) -> list[QueueRow]:
    """(c) or (d): batches of no-op jobs; latencies from procrastinate's events."""
    plan = _plan(args)
    queues = {name: f"bench_{case}_{name}" for name, _, _ in plan}
    conninfo = f"--conninfo={ctx.dsn}"
    began_file = ctx.work / f"{case}-began.json"
    worker_args = [
        PYTHON,
        str(LOAD),
        "worker",
        conninfo,
        f"--schema={SCHEMA}",
        f"--concurrency={args.worker_concurrency}",
        f"--out={began_file}",
    ]
    if case == "d":
        worker_args += ["--no-listen", f"--poll-s={args.poll_s}"]
    jobs = f"{SCHEMA}.procrastinate_jobs"

    def done(queue: str) -> int:
        rows = ctx.db.fetch(
            f"SELECT count(*) AS n FROM {jobs} WHERE queue_name = $1"
            " AND status IN ('succeeded', 'failed')",
            queue,
        )
        return int(rows[0]["n"])

    log(f"{case}: {_describe(plan)}; worker concurrency {args.worker_concurrency}")
    worker = Managed(f"{case}-worker", worker_args, ctx.work, pipes=True)
    with started(worker):
        _expect(worker, "ready")
        command = [PYTHON, str(LOAD), "defer", conninfo, f"--schema={SCHEMA}"]
        command.append(f"--clients={args.clients}")
        batches = run_batches(
            case,
            command,
            [(queues[name], count, rate) for name, count, rate in plan],
            done,
            [worker.pid],
            [worker],
            ctx,
        )
        _send(worker, "stop")
        _expect(worker, "done")
    began = {int(k): v for k, v in json.loads(began_file.read_text()).items()}
    result = []
    for (name, _count, rate), batch in zip(plan[1:], batches, strict=True):
        rows = ctx.db.fetch(
            "SELECT j.id, j.status::text AS status, j.attempts,"
            " extract(epoch FROM min(e.at) FILTER (WHERE e.type = 'deferred'))::float8"
            "   AS created,"
            " extract(epoch FROM min(e.at) FILTER (WHERE e.type = 'started'))::float8"
            "   AS taken,"
            " extract(epoch FROM max(e.at) FILTER (WHERE e.type IN ('succeeded', 'failed')))"
            "   ::float8 AS ended"
            f" FROM {jobs} j JOIN {SCHEMA}.procrastinate_events e ON e.job_id = j.id"
            " WHERE j.queue_name = $1 GROUP BY j.id",
            queues[name],
        )
        rows = [{**dict(r), "begins": began.get(int(r["id"]))} for r in rows]
        row = _queue_row(case, _load_label(rate), batch, rows, "succeeded")
        row.retried = sum(1 for r in rows if r["attempts"] > 1)
        result.append(row)
    return result


def procrastinate_schema(ctx: Context) -> None:
    proc = Managed(
        "procrastinate-schema",
        [PYTHON, str(LOAD), "schema", f"--conninfo={ctx.dsn}", f"--schema={SCHEMA}"],
        ctx.work,
        pipes=True,
    )
    with started(proc):
        _expect(proc, "done")


# --------------------------------------------------------------------------
# Unary through Envoy


@dataclass
class UnaryRow:
    replicas: int
    result: Measurement
    postgres_cpu_s: float | None
    new_backends: int
    driver_cpu_s: float


def wrk_warmup(url: str, args: argparse.Namespace, work: Path, label: str) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk is not installed (Debian: apt-get install -y wrk)")
    command = [wrk, f"-t{args.procs}", f"-c{args.procs * args.concurrency}", "--timeout", "10s"]
    warm = Managed(f"{label}-wrk-warmup", [*command, f"-d{args.warmup}s", url], work)
    with started(warm):
        if warm.popen.wait(args.warmup + 30) != 0:
            raise BenchError(f"wrk warm-up failed:\n{warm.log_tail()}")


def unary_case(
    replicas: list[Replica], args: argparse.Namespace, agent_id: str, ctx: Context
) -> UnaryRow:
    """(e) with `len(replicas)` replicas behind one Envoy."""
    count = len(replicas)
    ports = _ports()
    env = aster_env(args, ctx.database_url, ports, ctx.work / f"edge{count}")
    env["ASTER_UPSTREAMS"] = ",".join(r.target for r in replicas)
    log(f"(e) starting aster edge over {count} replica(s) on {HOST}:{ports['http']}")
    edge = Managed(f"edge{count}", [PYTHON, "-m", "aster.server.cli", "edge"], ctx.work, env)
    with started(edge):
        url = f"http://{HOST}:{ports['http']}/v1/agents/{agent_id}"
        body = wait_http_ok(edge, url)
        if json.loads(body).get("id") != agent_id:
            raise BenchError(f"the edge answered {body[:300]!r} for {url}")
        if args.warmup > 0:
            wrk_warmup(url, args, ctx.work, f"e{count}")
        load = argparse.Namespace(
            procs=args.procs, concurrency=args.concurrency, warmup=0, duration=args.duration
        )
        log(f"(e) wrk, {count} replica(s)")
        ctx.sampler.start()
        driver_before = time.process_time()
        result = wrk_load(url, load, [*(r.proc.pid for r in replicas), edge.pid], ctx.work, "e")
        postgres, new_backends = ctx.sampler.stop()
        driver = time.process_time() - driver_before
        edge.check_running()
        for replica in replicas:
            replica.proc.check_running()
    return UnaryRow(
        count, result, postgres if ctx.sampler.available else None, new_backends, driver
    )


# --------------------------------------------------------------------------
# Report


def ms(values: list[float], pct: float) -> str:
    return f"{percentile(values, pct):,.1f}" if values else "n/a"


def _pct(seconds: float | None, window_s: float) -> str:
    return "n/a" if seconds is None else f"{100 * seconds / window_s / NCPU:.0f}"


def queue_table(rows: list[QueueRow]) -> list[str]:
    lines = [
        "| case | load | jobs | enqueue call p50 / p99 ms | enqueued/s | done/s "
        "| taken p50 ms | taken p99 ms "
        "| begins p50 ms | begins p99 ms | retried | errors | executor CPU ms/job "
        "| PostgreSQL CPU ms/job | enqueuer CPU ms/job | new PG connections/job "
        "| others CPU % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        b = row.batch
        enqueue_s = b.report["t1"] - b.report["t0"]
        known = b.worker_cpu_s + (b.postgres_cpu_s or 0.0) + b.report["cpu_s"] + b.driver_cpu_s
        others = max(0.0, b.machine_cpu_s - known)
        calls = [1000 * s for s in b.report["latencies_s"]]
        lines.append(
            f"| {QUEUE_TITLES[row.case]} | {row.load} | {row.ok} "
            f"| {ms(calls, 50)} / {ms(calls, 99)} | {row.ok / enqueue_s:,.0f} "
            f"| {row.ok / row.done_s:,.0f} | {ms(row.taken_ms, 50)} | {ms(row.taken_ms, 99)} "
            f"| {ms(row.begins_ms, 50)} | {ms(row.begins_ms, 99)} | {row.retried} "
            f"| {sum(row.errors.values())} | {row.per_job_ms(b.worker_cpu_s)} "
            f"| {row.per_job_ms(b.postgres_cpu_s)} | {row.per_job_ms(b.report['cpu_s'])} "
            f"| {b.new_backends / row.ok if row.ok else 0:.2f} | {_pct(others, b.window_s)} |"
        )
    return lines


def unary_table(rows: list[UnaryRow]) -> list[str]:
    lines = [
        "| replicas | req/s | p50 ms | p99 ms | ratio to 1 replica | errors "
        "| Aster CPU % | Envoy CPU % | PostgreSQL CPU % | wrk CPU % | others CPU % "
        "| new PG connections/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = next((r.result.rps for r in rows if r.replicas == 1), None)
    for row in rows:
        r = row.result
        envoy = sum(v for k, v in r.server_cpu.items() if k.startswith("envoy"))
        aster = sum(r.server_cpu.values()) - envoy
        known = r.client_cpu_s + aster + envoy + (row.postgres_cpu_s or 0) + row.driver_cpu_s
        others = r.machine_cpu_s - known
        ratio = f"{r.rps / base:.2f}" if base else "n/a"
        lines.append(
            f"| {row.replicas} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {ratio} "
            f"| {sum(r.errors.values())} | {_pct(aster, r.seconds)} "
            f"| {_pct(envoy, r.seconds)} | {_pct(row.postgres_cpu_s, r.seconds)} "
            f"| {r.client_cpu_pct:.0f} | {_pct(max(0.0, others), r.seconds)} "
            f"| {row.new_backends / r.seconds:.0f} |"
        )
    return lines


def _version(name: str) -> str:
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return f"no {name}"


def machine(admin_dsn: str) -> list[str]:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    server = str(pg_admin(admin_dsn, "SHOW server_version")[0][0])
    envoy = "not found"
    with contextlib.suppress(Exception):
        from aster.server.edge.runner import envoy_binary

        out = subprocess.run(
            [envoy_binary(), "--version"], capture_output=True, text=True, timeout=20
        ).stdout
        found = re.search(r"/(\d+\.\d+\.\d+)/", out)
        envoy = found.group(1) if found else out.strip()[:80]
    wrk = shutil.which("wrk")
    wrk_version = "no wrk"
    if wrk:
        done = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=20)
        wrk_version = (done.stdout or done.stderr).split("[")[0].strip()
    packages = ", ".join(
        _version(n)
        for n in ("procrastinate", "psycopg", "psycopg-pool", "asyncpg", "sqlalchemy", "redis")
    )
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return [
        f"- CPUs: {NCPU} x {model}",
        f"- Python {platform.python_version()}, PostgreSQL {server.split()[0]}, "
        f"grpcio {grpc.__version__}, Envoy {envoy}, {wrk_version}",
        f"- {packages}",
        f"- load average before the run: {load}",
    ]


# --------------------------------------------------------------------------
# Main


@dataclass
class Context:
    """What every case needs."""

    work: Path
    dsn: str
    database_url: str
    db: Db
    sampler: PgSampler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--jobs", type=int, default=500, help="jobs of each burst batch")
    parser.add_argument("--paced-jobs", type=int, default=100, help="jobs of each paced batch")
    parser.add_argument("--paced-rate", type=float, default=20.0, help="jobs/s when paced")
    parser.add_argument("--warmup-jobs", type=int, default=20, help="jobs before the batches")
    parser.add_argument("--clients", type=int, default=4, help="concurrent enqueuing callers")
    parser.add_argument(
        "--worker-concurrency", type=int, default=20, help="procrastinate worker concurrency"
    )
    parser.add_argument(
        "--poll-s",
        type=float,
        default=0.5,
        help="ASTER_QUEUE_POLL_S, and procrastinate's polling interval in (d)",
    )
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per (e) row")
    parser.add_argument("--warmup", type=int, default=2, help="wrk warm-up seconds per (e) row")
    parser.add_argument("--procs", type=int, default=2, help="wrk threads")
    parser.add_argument("--concurrency", type=int, default=16, help="wrk connections per thread")
    parser.add_argument("--replicas", default="1,2,3", help="replica counts for (e)")
    parser.add_argument("--cases", default="abcde", help="which of the cases a-e to run")
    parser.add_argument(
        "--admin-dsn",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="a database to connect to for CREATE / DROP DATABASE",
    )
    parser.add_argument("--database", default="aster_bench", help="the database to create")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--output", type=Path, help="also write the report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.cases = set(args.cases.lower())
    if not args.cases or not args.cases <= set("abcde"):
        parser.error("--cases takes letters among a, b, c, d, e")
    args.replicas = sorted({int(n) for n in str(args.replicas).split(",") if n.strip()})
    if not args.replicas or min(args.replicas) < 1:
        parser.error("--replicas takes positive integers, e.g. 1,2,3")
    positive = (args.jobs, args.clients, args.worker_concurrency, args.duration, args.procs)
    if min(positive) < 1 or min(args.paced_jobs, args.warmup_jobs) < 0:
        parser.error("--jobs, --clients, --worker-concurrency, --duration, --procs: positive")
    if args.paced_jobs and args.paced_rate <= 0:
        parser.error("--paced-rate must be positive")
    return args


@dataclass
class Results:
    """What the run measured so far (printed even if a later case fails)."""

    header: list[str] = field(default_factory=list)
    queue: list[QueueRow] = field(default_factory=list)
    unary: list[UnaryRow] = field(default_factory=list)


def run(args: argparse.Namespace, work: Path, results: Results) -> None:
    if args.cases & set("cd") and importlib.util.find_spec("procrastinate") is None:
        raise BenchError(
            "cases (c) and (d) need procrastinate: .venv/bin/pip install procrastinate "
            "'psycopg[binary]' (or leave them out: --cases abe)"
        )
    results.header = machine(args.admin_dsn)
    with bench_database(args) as dsn:
        database_url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
        log(f"created database {args.database}; migrating")
        migrate(args, database_url, work)
        db = Db(dsn)
        try:
            ctx = Context(work, dsn, database_url, db, PgSampler(args.database, db))
            _cases(args, ctx, results)
        finally:
            db.close()


def report(args: argparse.Namespace, results: Results) -> list[str]:
    lines = ["## Run queue", "", *results.header, ""]
    if results.queue:
        queue_rows = sorted(results.queue, key=lambda r: r.case)
        lines += [
            f"Queue: per case, {args.warmup_jobs} warm-up jobs, then a burst of {args.jobs} "
            f"no-op jobs enqueued by {args.clients} concurrent callers"
            + (
                f", then {args.paced_jobs} jobs paced at {args.paced_rate:g}/s"
                if args.paced_jobs
                else ""
            )
            + f"; poll interval {args.poll_s:g} s (Aster's poller, and procrastinate in (d)); "
            f"procrastinate worker concurrency {args.worker_concurrency}.",
            "",
            *queue_table(queue_rows),
            "",
            *(f"- {note}" for row in queue_rows for note in row.notes),
            "",
        ]
    if results.unary:
        lines += [
            f"Unary GET /v1/agents/{{id}} through one Envoy: wrk -t{args.procs} "
            f"-c{args.procs * args.concurrency}, {args.warmup} s warm-up, {args.duration} s "
            "measured per row. Every replica, Envoy, PostgreSQL and wrk share "
            f"the same {NCPU} cores: the ratio measures contention on this machine, "
            "not scaling.",
            "",
            *unary_table(results.unary),
            "",
            *(
                f"- {row.replicas} replica(s): " + "; ".join(_cpu_notes(row.result))
                for row in results.unary
            ),
        ]
    return lines


def _cases(args: argparse.Namespace, ctx: Context, results: Results) -> None:
    # procrastinate first, on an otherwise idle machine (no replica polling).
    if args.cases & set("cd"):
        procrastinate_schema(ctx)
        for case in "cd":
            if case in args.cases:
                results.queue += procrastinate_case(case, args, ctx)
                log("\n".join(queue_table(results.queue)[-2:]))
    if not args.cases & set("abe"):
        return
    replicas = [start_replica(0, args, ctx.database_url, ctx.work)]
    for case in "ab":
        if case in args.cases:
            results.queue += aster_case(case, args, replicas[0], ctx)
            log("\n".join(queue_table(results.queue)[-2:]))
    if "e" in args.cases:
        agent_id = create_agent(replicas[0], "bench-get")
        for count in args.replicas:
            while len(replicas) < count:
                replicas.append(start_replica(len(replicas), args, ctx.database_url, ctx.work))
            results.unary.append(unary_case(replicas[:count], args, agent_id, ctx))
            log(f"(e) {unary_table(results.unary)[-1]}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; stops every child and drops the database however the run ends."""
    args = parse_args(argv)
    results = Results()

    def measure(work: Path) -> list[str]:
        run(args, work, results)
        return []

    def late_report(code: int) -> list[str]:
        if not (results.queue or results.unary):
            return []
        if code:
            print("bench: what was measured before the run ended:", file=sys.stderr)
        return report(args, results)

    return run_bench(
        "aster-bench-queue-", measure, output=args.output, keep=args.keep, late_report=late_report
    )


if __name__ == "__main__":
    sys.exit(main())
