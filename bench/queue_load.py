"""One enqueuing or worker process for bench/run_queue.py.

Modes:

* `send`: `AgentService/SendMessage` over gRPC to one `aster serve`
  (`--clients` callers, one channel each): the normal path, where the
  admitting replica executes the run at once.
* `admit`: Aster's own admission code (`RunService.start`, wired by
  `build_components`) in this process, with the executor's `dispatch`
  replaced by a no-op: the runs are stored QUEUED exactly as `SendMessage`
  stores them, and nobody holds them, so only a replica's queue poller can
  start them (the poll path).
* `defer`: procrastinate `defer_async` of the no-op task.
* `worker`: a procrastinate worker; it records when each task body starts.
* `schema`: creates the procrastinate schema (in its own PostgreSQL schema).

The enqueuing modes take batches, `--batch TARGET,COUNT,RATE` (TARGET: the
agent id or the procrastinate queue; RATE: jobs per second over all
callers, 0 for as fast as they go). They print `ready`, then for each batch
wait for a line on stdin, enqueue it and print one JSON line (counts,
wall-clock bounds, the latency of each enqueuing call, CPU); after the last
batch they wait for a line on stdin (or its end) and exit, so that their
database connections stay open while the parent reads PostgreSQL's CPU
figures.

`worker` prints `ready` once the worker runs, and on a line on stdin (or
its end) stops the worker, writes {job id: task start time} to `--out` and
prints `done`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

GRPC_OPTIONS = [("grpc.enable_http_proxy", 0)]
TASK_NAME = "noop"

# call(target, caller index): enqueues one job.
Call = Callable[[str, int], Awaitable[None]]


def _say(value: Any) -> None:
    print(value if isinstance(value, str) else json.dumps(value), flush=True)


async def _line() -> str:
    return await asyncio.to_thread(sys.stdin.readline)


async def _batch(target: str, count: int, rate: float, clients: int, call: Call) -> dict[str, Any]:
    """`count` jobs by `clients` concurrent callers, job j not before
    start + j / rate when `rate` > 0; counts and wall-clock bounds."""
    next_job = 0
    errors: Counter[str] = Counter()
    ok = 0
    latencies: list[float] = []
    start = time.monotonic()

    async def caller(index: int) -> None:
        nonlocal next_job, ok
        while next_job < count:
            job, next_job = next_job, next_job + 1
            if rate > 0:
                await asyncio.sleep(max(0.0, start + job / rate - time.monotonic()))
            try:
                sent = time.monotonic()
                await call(target, index)
                latencies.append(time.monotonic() - sent)
                ok += 1
            except Exception as err:  # counted and reported, never fatal
                errors[_error_name(err)] += 1

    cpu0, t0 = time.process_time(), time.time()
    await asyncio.gather(*(caller(i) for i in range(clients)))
    latencies.sort()
    return {
        "target": target,
        "ok": ok,
        "latencies_s": latencies,
        "errors": dict(errors),
        "t0": t0,
        "t1": time.time(),
        "cpu_s": time.process_time() - cpu0,
    }


def _error_name(err: Exception) -> str:
    code = getattr(err, "code", None)
    if callable(code):
        return str(getattr(code(), "name", code()))
    return type(err).__name__


async def _enqueue(args: argparse.Namespace, call: Call) -> None:
    _say("ready")
    for target, count, rate in args.batch:
        await _line()
        _say(await _batch(target, count, rate, args.clients, call))
    await _line()


async def send(args: argparse.Namespace) -> None:
    import grpc

    from aster.v1 import agent_pb2, agent_pb2_grpc

    channels = [
        grpc.aio.insecure_channel(args.target, options=GRPC_OPTIONS) for _ in range(args.clients)
    ]
    stubs = [agent_pb2_grpc.AgentServiceStub(c) for c in channels]

    async def call(agent_id: str, index: int) -> None:
        request = agent_pb2.SendMessageRequest(agent_id=agent_id, message="go")
        await stubs[index].SendMessage(request, timeout=60)

    try:
        await _enqueue(args, call)
    finally:
        for channel in channels:
            await channel.close()


async def admit(args: argparse.Namespace) -> None:
    from aster.server.app import build_components
    from aster.server.config import Settings
    from aster.server.runs.models import RunRequest
    from aster.server.tenancy import DEFAULT_TENANT

    settings = Settings(
        database_url=args.database_url,
        quota_max_concurrent_runs=0,
        log_level="warning",
    )
    components = build_components(settings)
    # Admission only: nobody in this process executes or leases the runs.
    components.executor.dispatch = lambda run: None  # type: ignore[method-assign]

    async def call(agent_id: str, _: int) -> None:
        request = RunRequest(agent_id=agent_id, message="go", background=True)
        await components.runs.start(DEFAULT_TENANT, request)

    try:
        await _enqueue(args, call)
    finally:
        await components.database.close()


def _app(args: argparse.Namespace, pool_size: int) -> Any:
    import procrastinate

    connector = procrastinate.PsycopgConnector(
        conninfo=args.conninfo,
        kwargs={"options": f"-c search_path={args.schema}"},
        min_size=pool_size,
        max_size=pool_size,
    )
    return procrastinate.App(connector=connector)


async def schema(args: argparse.Namespace) -> None:
    app = _app(args, 1)
    async with app.open_async():
        await app.connector.execute_query_async(f"CREATE SCHEMA {args.schema}")
        await app.schema_manager.apply_schema_async()
    _say("done")


async def defer(args: argparse.Namespace) -> None:
    app = _app(args, args.clients)

    @app.task(name=TASK_NAME)
    async def noop() -> None:
        """Never runs here: this process only defers."""

    jobs = {target: noop.configure(queue=target) for target, _, _ in args.batch}

    async def call(queue: str, _: int) -> None:
        await jobs[queue].defer_async()

    async with app.open_async():
        await _enqueue(args, call)


async def worker(args: argparse.Namespace) -> None:
    # The listener, the heartbeat and the abort poller hold connections too.
    app = _app(args, args.concurrency + 3)
    began: dict[int, float] = {}

    @app.task(name=TASK_NAME, pass_context=True)
    async def noop(context: Any) -> None:
        began[context.job.id] = time.time()

    async with app.open_async():
        running = asyncio.create_task(
            app.run_worker_async(
                concurrency=args.concurrency,
                listen_notify=not args.no_listen,
                fetch_job_polling_interval=args.poll_s,
                install_signal_handlers=False,
                delete_jobs="never",
            )
        )
        await asyncio.sleep(0.5)
        if running.done():
            running.result()
        _say("ready")
        await _line()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, 30)
    await asyncio.to_thread(Path(args.out).write_text, json.dumps(began))
    _say("done")


def _batch_arg(text: str) -> tuple[str, int, float]:
    target, count, rate = text.split(",")
    return target, int(count), float(rate)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    modes = parser.add_subparsers(dest="mode", required=True)
    for name in ("send", "admit", "defer"):
        mode = modes.add_parser(name)
        mode.add_argument("--batch", type=_batch_arg, action="append", required=True)
        mode.add_argument("--clients", type=int, default=4)
    modes.choices["send"].add_argument("--target", required=True)
    modes.choices["admit"].add_argument("--database-url", required=True)
    for name in ("defer", "worker", "schema"):
        mode = modes.choices.get(name) or modes.add_parser(name)
        mode.add_argument("--conninfo", required=True)
        mode.add_argument("--schema", default="procrastinate")
    work = modes.choices["worker"]
    work.add_argument("--concurrency", type=int, default=20)
    work.add_argument("--no-listen", action="store_true", help="poll only (no LISTEN/NOTIFY)")
    work.add_argument("--poll-s", type=float, default=5.0)
    work.add_argument("--out", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    mode = {"send": send, "admit": admit, "defer": defer, "worker": worker, "schema": schema}
    asyncio.run(mode[args.mode](args))


if __name__ == "__main__":
    main()
