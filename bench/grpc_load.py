"""One gRPC load-generator process for bench/unary.py.

It opens `--channels` channels (one TCP connection each) to the target,
keeps `--concurrency` GetAgent calls in flight spread over them, and
records the latency of every call that starts inside the measurement
window. The protocol with the parent is line-based:

1. this process prints `ready` once the channel works;
2. the parent writes `<window start> <window end>` (time.monotonic() values,
   which are system-wide on Linux) on stdin; calls run from then on, the
   time before the window start being the warm-up;
3. at the window end this process writes the latencies (float64 seconds) to
   `--out` and prints one JSON line: counts, errors and CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from collections import Counter
from pathlib import Path

import grpc

from aster.v1 import agent_pb2, agent_pb2_grpc

CALL_TIMEOUT_S = 10.0


async def run(
    target: str, agent_id: str, concurrency: int, channels: int, out: Path, ready_timeout: float
) -> int:
    """Runs the load; returns the exit code."""
    # A local subchannel pool gives each channel its own TCP connection, so
    # that SO_REUSEPORT can spread them over the server's worker processes.
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_http_proxy", 0)]
    opened = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
    try:
        request = agent_pb2.GetAgentRequest(id=agent_id)
        stubs = [agent_pb2_grpc.AgentServiceStub(channel) for channel in opened]
        for channel, stub in zip(opened, stubs, strict=True):
            await asyncio.wait_for(channel.channel_ready(), ready_timeout)
            await stub.GetAgent(request, timeout=ready_timeout)
        print("ready", flush=True)

        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            print("grpc_load: no window on stdin", file=sys.stderr)
            return 2
        start, end = (float(x) for x in line.split())
        latencies = array("d")
        errors: Counter[str] = Counter()
        late = time.monotonic() > start

        async def caller(stub: agent_pb2_grpc.AgentServiceStub) -> None:
            while True:
                began = time.monotonic()
                if began >= end:
                    return
                try:
                    await stub.GetAgent(request, timeout=CALL_TIMEOUT_S)  # type: ignore[misc]
                    failed = ""
                except grpc.aio.AioRpcError as err:
                    failed = err.code().name
                if began >= start:
                    if failed:
                        errors[failed] += 1
                    else:
                        latencies.append(time.monotonic() - began)

        async def cpu_meter() -> float:
            await asyncio.sleep(max(0.0, start - time.monotonic()))
            cpu_start = time.process_time()
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            return time.process_time() - cpu_start

        meter = asyncio.create_task(cpu_meter())
        await asyncio.gather(*(caller(stubs[i % channels]) for i in range(concurrency)))
        cpu_s = await meter
        with out.open("wb") as handle:
            latencies.tofile(handle)
        result = {"ok": len(latencies), "errors": dict(errors), "cpu_s": cpu_s, "late": late}
        print(json.dumps(result), flush=True)
        return 0
    finally:
        for channel in opened:
            await channel.close(None)


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--agent-id", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--channels", type=int, default=1, help="channels (connections)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    args = parser.parse_args()
    return asyncio.run(
        run(
            args.target,
            args.agent_id,
            args.concurrency,
            args.channels,
            args.out,
            args.ready_timeout,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
