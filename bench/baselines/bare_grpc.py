"""Baseline (a) of bench/unary.py: a bare grpc.aio server whose
`aster.v1.AgentService/GetAgent` answers a constant `Agent`.

No interceptors, no storage, no conversion: the ceiling of the Python gRPC
stack on this machine. With `--workers N` it runs N processes sharing the
port through SO_REUSEPORT, as `aster serve` does with ASTER_WORKERS. It also
serves the standard health service, which bench/unary.py polls for readiness.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from types import FrameType

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aster.v1 import agent_pb2, agent_pb2_grpc


def default_agent() -> agent_pb2.Agent:
    """A constant agent shaped like the one bench/unary.py creates."""
    stamp = Timestamp(seconds=1_767_225_600)
    return agent_pb2.Agent(
        id="agt_bench0000000000000000",
        display_name="bench agent",
        model=agent_pb2.ModelConfig(provider="scripted"),
        state=agent_pb2.AGENT_STATE_ACTIVE,
        create_time=stamp,
        update_time=stamp,
        etag='"1"',
    )


class ConstantAgentService(agent_pb2_grpc.AgentServiceServicer):
    """GetAgent returns the same message every time; the rest is UNIMPLEMENTED."""

    def __init__(self, agent: agent_pb2.Agent) -> None:
        self._agent = agent

    async def GetAgent(
        self, request: agent_pb2.GetAgentRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> agent_pb2.Agent:
        return self._agent


async def serve(host: str, port: int, agent: agent_pb2.Agent) -> None:
    """Serves until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    servicer = ConstantAgentService(agent)  # type: ignore[abstract]
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise SystemExit(f"bare_grpc: cannot bind {host}:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def _worker(host: str, port: int, agent_bytes: bytes) -> None:
    asyncio.run(serve(host, port, agent_pb2.Agent.FromString(agent_bytes)))


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--agent-file", type=Path, help="a serialized aster.v1.Agent to answer with"
    )
    args = parser.parse_args()
    if args.agent_file is not None:
        agent = agent_pb2.Agent.FromString(args.agent_file.read_bytes())
    else:
        agent = default_agent()
    if args.workers == 1:
        asyncio.run(serve(args.host, args.port, agent))
        return 0

    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(args.host, args.port, agent.SerializeToString()))
        for _ in range(args.workers)
    ]
    for process in workers:
        process.start()

    def forward(_signum: int, _frame: FrameType | None) -> None:
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for process in workers:
        process.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
