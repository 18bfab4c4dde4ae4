"""One streaming load-generator process for bench/chat_stream.py.

Modes:

* `grpc`: keeps `--concurrency` `AgentService/Chat` calls in flight over
  `--channels` grpc.aio channels; each caller reads its stream to the end,
  then starts the next one.
* `sse`: the same through the REST edge: `POST <url>` with
  `{"message": ...}`, reading the `data: {json}` lines of the Server-Sent
  Events reply. The HTTP/1.1 client is a minimal one on asyncio streams
  (one connection per stream, chunked decoding), cheaper than a full client
  library so that the client costs as little CPU as possible.
* `idle`: opens many Chat calls that stay open without events (for the
  memory measurement) and holds them until told to cancel them.

For `grpc` and `sse` the protocol with the parent is line-based:

1. this process checks that one complete stream works, then prints `ready`;
2. the parent writes `<window start> <window end>` (time.monotonic() values,
   system-wide on Linux) on stdin; streams run from then on, the time before
   the window start being the warm-up;
3. at the window end this process cancels the streams still open, writes
   the latency samples (float64 seconds) to `--out` and prints one JSON line.

Every event received inside the window is counted. Its latency is the
receive time (time.time(), taken when the event's bytes reach this process)
minus the event's `create_time`, which the server stamped with its own wall
clock: both clocks are the same machine's. Each finished stream is checked:
`seq` must grow by one from 1, the stream must end with `run_finished`
COMPLETED and hold `--expect-events` events.

For `idle` the parent writes commands on stdin: `open <total> <seconds>
[<stall>]` opens streams until `<total>` of them have received their first
event (the server's `run_started`: the run exists and waits on the model),
the time is up, or no stream opened for `<stall>` seconds, printing a JSON
progress line every second and a final one (streams still opening then are
cancelled: `gave_up`);
`cancel` cancels every stream (the client cancels; the server should then
cancel the runs) and prints a JSON line; `quit` (or end of input) exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2

EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
CALL_TIMEOUT_S = 120.0


def channel_options() -> list[tuple[str, Any]]:
    """One TCP connection per channel, no proxy, no message cap."""
    return [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_http_proxy", 0),
        ("grpc.max_receive_message_length", -1),
    ]


@dataclass
class Tally:
    """What one process saw inside the window."""

    start: float  # window bounds in time.time() terms
    end: float
    events: int = 0
    streams: int = 0
    bad_streams: int = 0
    gaps: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)  # why streams were bad
    latencies: array[float] = field(default_factory=lambda: array("d"))

    def inside(self, now: float) -> bool:
        """True while `now` is inside the window."""
        return self.start <= now < self.end

    def result(self, cpu_s: float, late: bool) -> dict[str, Any]:
        """The JSON line printed at the end."""
        return {
            "events": self.events,
            "streams": self.streams,
            "bad_streams": self.bad_streams,
            "gaps": self.gaps,
            "errors": dict(self.errors),
            "problems": dict(self.problems),
            "cpu_s": cpu_s,
            "late": late,
        }


class StreamCheck:
    """Checks one stream's events as they arrive."""

    def __init__(self) -> None:
        self.count = 0
        self.gaps = 0
        self.status = ""  # run_finished's status
        self.error = ""  # the text of an `error` event, if any
        self.kinds: Counter[str] = Counter()

    def see(self, seq: int, kind: str, detail: str = "") -> None:
        """One event, in arrival order; `detail` is run_finished's status or
        an error event's code and message."""
        self.count += 1
        self.kinds[kind] += 1
        if seq != self.count:
            self.gaps += 1
        if kind == "run_finished":
            self.status = detail
        elif kind == "error":
            self.error = detail

    def problem(self, expect: int) -> str:
        """Why the stream was not whole ("" if it was)."""
        if self.gaps:
            return "seq gaps"
        if self.status != "RUN_STATUS_COMPLETED":
            ended = f"ended {self.status}" if self.status else "no run_finished"
            return f"{ended} ({self.error})" if self.error else ended
        if expect > 0 and self.count != expect:
            other = ", ".join(
                f"{k} x{n}" for k, n in sorted(self.kinds.items()) if k != "text_delta"
            )
            return f"{self.count} events, not {expect} ({other})"
        return ""


# Problems of the streams read before the window (to check the target works):
# reported with the window's, not fatal.
trial_problems: Counter[str] = Counter()

EVENT_KINDS = frozenset(f.name for f in run_pb2.ChatEvent.DESCRIPTOR.oneofs_by_name["event"].fields)


# --------------------------------------------------------------------------
# gRPC


async def grpc_stream(
    stub: agent_pb2_grpc.AgentServiceStub, request: agent_pb2.ChatRequest, tally: Tally | None
) -> StreamCheck:
    """Reads one Chat to the end; counts its events into `tally` if given."""
    check = StreamCheck()
    call: Any = stub.Chat(request, timeout=CALL_TIMEOUT_S)
    try:
        async for event in call:
            now = time.time()
            stamp = event.create_time
            kind = event.WhichOneof("event")
            detail = ""
            if kind == "run_finished":
                detail = run_pb2.RunStatus.Name(event.run_finished.status)
            elif kind == "error":
                detail = f"{event.error.code}: {event.error.message}"
            check.see(event.seq, kind, detail)
            if tally is not None and tally.inside(now):
                tally.events += 1
                tally.latencies.append(now - stamp.seconds - stamp.nanos * 1e-9)
    finally:
        call.cancel()
    return check


async def run_grpc(args: argparse.Namespace) -> int:
    """Closed-loop Chat streams over gRPC."""
    opened = [
        grpc.aio.insecure_channel(args.target, options=channel_options())
        for _ in range(args.channels)
    ]
    try:
        stubs = [agent_pb2_grpc.AgentServiceStub(channel) for channel in opened]
        request = agent_pb2.ChatRequest(agent_id=args.agent_id, message=args.message)
        for channel, stub in zip(opened, stubs, strict=True):
            await asyncio.wait_for(channel.channel_ready(), args.ready_timeout)
            check = await asyncio.wait_for(grpc_stream(stub, request, None), args.ready_timeout)
            if check.problem(args.expect_events):
                trial_problems[check.problem(args.expect_events)] += 1

        async def one(worker: int, tally: Tally) -> StreamCheck:
            return await grpc_stream(stubs[worker % args.channels], request, tally)

        return await closed_loop(args, one)
    finally:
        for channel in opened:
            await channel.close(None)


# --------------------------------------------------------------------------
# SSE


class HttpError(Exception):
    """A non-200 reply or a broken response."""


def _timestamp(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time such as 2026-01-01T00:00:00.123456Z."""
    return datetime.fromisoformat(text).timestamp()


async def sse_stream(url: str, body: bytes, tally: Tally | None) -> StreamCheck:
    """Posts one chat to the edge and reads its SSE reply to the end."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    check = StreamCheck()
    try:
        writer.write(
            (
                f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        chunked = b"transfer-encoding: chunked" in head.lower()
        if status != b"200":
            rest = await reader.read(2000)
            raise HttpError(f"HTTP {status.decode()}: {rest[:300]!r}")
        pending = b""
        while True:
            if chunked:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    break
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
            now = time.time()
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                event = json.loads(line[5:])
                kind = next((k for k in event if k in EVENT_KINDS), "")
                detail = ""
                if kind == "run_finished":
                    detail = event[kind].get("status", "")
                elif kind == "error":
                    detail = f"{event[kind].get('code')}: {event[kind].get('message')}"
                check.see(int(event["seq"]), kind, detail)
                if tally is not None and tally.inside(now):
                    tally.events += 1
                    tally.latencies.append(now - _timestamp(event["create_time"]))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return check


async def run_sse(args: argparse.Namespace) -> int:
    """Closed-loop chat streams over SSE."""
    body = json.dumps({"message": args.message}).encode()
    check = await asyncio.wait_for(sse_stream(args.url, body, None), args.ready_timeout)
    if check.problem(args.expect_events):
        trial_problems[check.problem(args.expect_events)] += 1

    async def one(_worker: int, tally: Tally) -> StreamCheck:
        return await sse_stream(args.url, body, tally)

    return await closed_loop(args, one)


# --------------------------------------------------------------------------
# Closed loop


async def closed_loop(
    args: argparse.Namespace, one: Callable[[int, Tally], Awaitable[StreamCheck]]
) -> int:
    """`--concurrency` workers each running `one(worker, tally)` back to back
    until the window ends; prints the result."""
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line.strip():
        print("stream_load: no window on stdin", file=sys.stderr)
        return 2
    start, end = (float(x) for x in line.split())
    offset = time.time() - time.monotonic()
    tally = Tally(start + offset, end + offset)
    for problem, count in trial_problems.items():
        tally.problems[f"before the window: {problem}"] += count
    late = time.monotonic() > start

    async def worker(index: int) -> None:
        while time.time() < tally.end:
            try:
                check = await one(index, tally)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as err:
                if time.time() < tally.end:
                    tally.errors[err.code().name] += 1
                continue
            except (OSError, HttpError, asyncio.IncompleteReadError, ValueError) as err:
                if time.time() < tally.end:
                    tally.errors[type(err).__name__] += 1
                    print(f"stream_load: {err!r}", file=sys.stderr)
                await asyncio.sleep(0.05)
                continue
            if time.time() < tally.end:
                tally.streams += 1
                tally.gaps += check.gaps
                problem = check.problem(args.expect_events)
                if problem:
                    tally.bad_streams += 1
                    tally.problems[problem[:200]] += 1

    async def cpu_meter() -> float:
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu_start = time.process_time()
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        return time.process_time() - cpu_start

    meter = asyncio.create_task(cpu_meter())
    workers = [asyncio.create_task(worker(i)) for i in range(args.concurrency)]
    cpu_s = await meter
    # Streams still open at the window end are cancelled, not drained.
    for task in workers:
        task.cancel()
    for outcome in await asyncio.gather(*workers, return_exceptions=True):
        if isinstance(outcome, Exception):
            print(f"stream_load: a worker failed: {outcome!r}", file=sys.stderr)
            return 1
    with args.out.open("wb") as handle:
        tally.latencies.tofile(handle)
    print(json.dumps(tally.result(cpu_s, late)), flush=True)
    return 0


# --------------------------------------------------------------------------
# Idle streams


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run_idle(args: argparse.Namespace) -> int:
    """Opens idle Chat streams on command and holds them."""
    opened = [
        grpc.aio.insecure_channel(args.target, options=channel_options())
        for _ in range(args.channels)
    ]
    stubs = [agent_pb2_grpc.AgentServiceStub(channel) for channel in opened]
    request = agent_pb2.ChatRequest(agent_id=args.agent_id, message=args.message)
    calls: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    waiting: set[Any] = set()  # calls without their first event yet
    state: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()  # kinds of events after the first
    began = time.monotonic()

    def report(kind: str, **extra: Any) -> None:
        line = {
            kind: True,
            "t": round(time.monotonic() - began, 2),
            "open": state["open"],
            "pending": state["pending"],
            "ended": state["ended"],
            "unexpected_events": dict(unexpected),
            "errors": dict(errors),
            "cpu_s": round(time.process_time(), 2),
            "rss_mib": round(_rss_mib(), 1),
            **extra,
        }
        print(json.dumps(line), flush=True)

    async def hold(index: int, permits: asyncio.Semaphore) -> None:
        call: Any = stubs[index % args.channels].Chat(request)
        calls.append(call)
        waiting.add(call)
        got_first = False
        try:
            first = await call.read()
            if first is EOF:
                raise EOFError
            got_first = True
            waiting.discard(call)
            state["pending"] -= 1
            state["open"] += 1
            permits.release()
            while (event := await call.read()) is not EOF:
                state["unexpected"] += 1
                unexpected[str(event.WhichOneof("event"))] += 1
            state["ended"] += 1  # the server ended an idle stream
        except asyncio.CancelledError:
            pass
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                errors[err.code().name] += 1
        except EOFError:
            errors["EOF"] += 1
        finally:
            waiting.discard(call)
            if got_first:
                state["open"] -= 1
            else:
                state["pending"] -= 1
                permits.release()

    try:
        for channel in opened:
            await asyncio.wait_for(channel.channel_ready(), args.ready_timeout)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                break
            if line[0] == "cancel":
                cancelled = state["open"] + state["pending"]
                for call in calls:
                    call.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                calls.clear()
                tasks.clear()
                report("cancelled", cancelled=cancelled)
                continue
            total, seconds = int(line[1]), float(line[2])
            stall_s = float(line[3]) if len(line) > 3 else seconds
            permits = asyncio.Semaphore(args.open_concurrency)
            deadline = time.monotonic() + seconds
            step_start = time.monotonic()
            next_report = step_start + 1
            best, best_at = state["open"], step_start
            stalled = False
            while state["open"] < total and time.monotonic() < deadline:
                if sum(errors.values()) > args.max_errors:
                    break
                if state["open"] > best:
                    best, best_at = state["open"], time.monotonic()
                elif time.monotonic() - best_at > stall_s:
                    stalled = True  # no stream opened for stall_s: give up
                    break
                if state["open"] + state["pending"] < total:
                    try:
                        await asyncio.wait_for(permits.acquire(), 0.2)
                    except TimeoutError:
                        pass
                    else:
                        state["pending"] += 1  # here, not in the task: no overshoot
                        tasks.append(asyncio.create_task(hold(len(tasks), permits)))
                else:
                    await asyncio.sleep(0.05)
                if time.monotonic() >= next_report:
                    report("progress")
                    next_report += 1
            seconds = round(time.monotonic() - step_start, 2)
            # Streams still opening are given up, so that the server settles.
            gave_up = len(waiting)
            for call in list(waiting):
                call.cancel()
            await asyncio.sleep(0.5)
            report("opened", seconds=seconds, gave_up=gave_up, stalled=stalled)
        return 0
    finally:
        for call in calls:
            call.cancel()
        for task in tasks:
            task.cancel()
        for channel in opened:
            await channel.close(None)


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("grpc", "sse", "idle"), required=True)
    parser.add_argument("--target", help="host:port (grpc, idle)")
    parser.add_argument("--url", help="the chat URL of the edge (sse)")
    parser.add_argument("--agent-id", default="")
    parser.add_argument("--message", default="go")
    parser.add_argument("--concurrency", type=int, default=1, help="streams in flight")
    parser.add_argument("--channels", type=int, default=1, help="gRPC channels (connections)")
    parser.add_argument("--expect-events", type=int, default=0, help="events per whole stream")
    parser.add_argument("--open-concurrency", type=int, default=100, help="idle: streams opening")
    parser.add_argument("--max-errors", type=int, default=200, help="idle: stop opening after")
    parser.add_argument("--out", type=Path, help="latency samples (grpc, sse)")
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    args = parser.parse_args()
    if args.mode == "grpc":
        return asyncio.run(run_grpc(args))
    if args.mode == "sse":
        return asyncio.run(run_sse(args))
    return asyncio.run(run_idle(args))


if __name__ == "__main__":
    sys.exit(main())
