"""Baseline (a) of bench/chat_stream.py: a bare grpc.aio server whose
`aster.v1.AgentService/Chat` streams a fixed list of pre-built `ChatEvent`
messages as fast as it can.

No interceptors, no storage, no run machinery: the ceiling of server
streaming in Python gRPC on this machine. The events are read from
`--events-file` (length-prefixed serialized ChatEvents: bench/chat_stream.py
records one real Aster stream so that both send the same messages), or
synthesized in Aster's shape (run_started, text_message_start, `--words`
text deltas, text_message_end, usage, run_finished).

Just before each event is written, the server sets its `create_time` to the
current wall-clock time, so that a client on the same machine can measure
how long an event takes from the server's hand to its own.

A Chat whose `message` is `hold` sends its first event, then waits until
the client goes away: an idle stream, for the memory measurement. The server also
serves the standard health service, which bench/chat_stream.py polls.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aster.v1 import agent_pb2, agent_pb2_grpc, run_pb2

HOLD = "hold"
_LENGTH = struct.Struct(">I")


def write_events(path: Path, events: list[run_pb2.ChatEvent]) -> None:
    """Stores `events` as 4-byte big-endian lengths each followed by the message."""
    with path.open("wb") as handle:
        for event in events:
            data = event.SerializeToString()
            handle.write(_LENGTH.pack(len(data)))
            handle.write(data)


def read_events(path: Path) -> list[run_pb2.ChatEvent]:
    """The events `write_events` stored."""
    data = path.read_bytes()
    events = []
    offset = 0
    while offset < len(data):
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        events.append(run_pb2.ChatEvent.FromString(data[offset : offset + size]))
        offset += size
    return events


def synthetic_events(words: int) -> list[run_pb2.ChatEvent]:
    """A stream shaped like a scripted Aster reply of `words` words."""
    common = {"run_id": "run_bench00000000000000000", "session_id": "ses_bench0000000000000000"}
    message_id = "msg_bench0000000000000000"
    events = [
        run_pb2.ChatEvent(run_started=run_pb2.RunStarted(agent_id="agt_bench")),
        run_pb2.ChatEvent(text_message_start=run_pb2.TextMessageStart(message_id=message_id)),
    ]
    events += [
        run_pb2.ChatEvent(text_delta=run_pb2.TextDelta(message_id=message_id, delta=f"w{i} "))
        for i in range(words)
    ]
    events += [
        run_pb2.ChatEvent(text_message_end=run_pb2.TextMessageEnd(message_id=message_id)),
        run_pb2.ChatEvent(usage=run_pb2.Usage(input_tokens=1, output_tokens=words)),
        run_pb2.ChatEvent(run_finished=run_pb2.RunFinished(status=run_pb2.RUN_STATUS_COMPLETED)),
    ]
    for seq, event in enumerate(events, start=1):
        event.seq, event.attempt = seq, 1
        event.run_id, event.session_id = common["run_id"], common["session_id"]
    return events


class StreamingAgentService(agent_pb2_grpc.AgentServiceServicer):
    """Chat streams the events; the rest is UNIMPLEMENTED."""

    def __init__(self, events: list[run_pb2.ChatEvent]) -> None:
        self._events = events

    async def Chat(
        self, request: agent_pb2.ChatRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[run_pb2.ChatEvent]:
        if request.message == HOLD:
            yield self._events[0]
            await asyncio.Event().wait()  # until the client cancels
        for event in self._events:
            # grpc.aio serializes a yielded message before the generator
            # resumes, so the shared message can be stamped in place.
            event.create_time.FromNanoseconds(time.time_ns())
            yield event


async def serve(host: str, port: int, events: list[run_pb2.ChatEvent]) -> None:
    """Serves until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    servicer = StreamingAgentService(events)  # type: ignore[abstract]
    agent_pb2_grpc.add_AgentServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise SystemExit(f"bare_stream: cannot bind {host}:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events-file", type=Path, help="events recorded by bench/chat_stream.py")
    parser.add_argument("--words", type=int, default=500, help="text deltas without a file")
    args = parser.parse_args()
    events = read_events(args.events_file) if args.events_file else synthetic_events(args.words)
    asyncio.run(serve(args.host, args.port, events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
