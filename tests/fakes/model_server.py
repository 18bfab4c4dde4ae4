"""A fake model server speaking the streaming wire formats of OpenAI Chat
Completions and Anthropic Messages, for tests.

It runs a small HTTP/1.1 server on its own asyncio loop in a background thread
on a free 127.0.0.1 port, so it serves async tests, sync tests and an Aster
server started as a subprocess alike::

    with FakeModelServer() as fake:
        fake.enqueue(Reply(text="Hello there"), Reply.error(429, retry_after="3"))
        ...  # point an agent at fake.openai_base_url or fake.anthropic_base_url
        assert fake.requests[0].json["model"] == "gpt-test"

* `POST <anything>/chat/completions` answers in the OpenAI format: SSE
  `data: {chunk}` lines (role, content pieces, tool-call pieces with
  `index`/`id`/`function.name`/`function.arguments`, the finish chunk, a usage
  chunk when `stream_options.include_usage` is set) and `data: [DONE]`.
* `POST <anything>/messages` answers in the Anthropic format: `event:`/`data:`
  pairs message_start, content_block_start, content_block_delta
  (text_delta / input_json_delta), content_block_stop, message_delta,
  message_stop.

Each request takes the next enqueued `Reply` (or `default_reply` when none is
queued). A reply is rendered in the format of the endpoint it is served on.
Errors use each API's documented error JSON. `cut_after` closes the
connection mid-stream; `stall_after` stops sending and waits for the client
to go away. Every request is recorded (`requests`), and a client that closes
the connection before its stream finished is counted (`disconnects`, with
`wait_for_disconnects`): the proof that cancellation reaches the model server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

Api = Literal["openai", "anthropic"]

_WORD = re.compile(r"\s*\S+\s*")
_MAX_HEAD_BYTES = 64 * 1024
_MAX_BODY_BYTES = 32 * 1024 * 1024

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}

# Error `type` (and OpenAI `code`) per status, as the two APIs document them.
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded."),
}
_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "An unexpected error has occurred internal to Anthropic's systems."),
    529: ("overloaded_error", "Anthropic's API is temporarily overloaded."),
}


def split_words(text: str) -> list[str]:
    """`text` in word-sized pieces (word + following whitespace) that join to `text`."""
    pieces: list[str] = _WORD.findall(text)
    return pieces or ([text] if text else [])


@dataclass(frozen=True)
class FakeToolCall:
    """A tool call the fake model makes. `arguments` is any JSON value (sent
    as compact JSON) or a string sent verbatim (to send broken JSON)."""

    name: str
    arguments: Any = field(default_factory=dict)
    id: str = ""

    def arguments_json(self) -> str:
        """The arguments as the JSON text the model streams."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))

    def arguments_object(self) -> dict[str, Any]:
        """The arguments as an object (Anthropic's `input`); {} if not one."""
        value = self.arguments
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Reply:
    """What the fake model answers to one request.

    Content chunks are the text pieces and tool-call pieces of the stream;
    `cut_after`, `stall_after` and `error_after` count them (with N at least
    the number of content chunks, they act after the last one, before the
    finish)."""

    text: str = ""
    tool_calls: Sequence[FakeToolCall] = ()
    # Explicit text pieces; default: word by word.
    chunks: Sequence[str] | None = None
    # Tool-call arguments stream in pieces of this many characters.
    args_chunk_chars: int = 8
    # Seconds to wait before each event of the stream.
    chunk_delay_s: float = 0.0
    # >= 400: answer with this error instead (the API's error JSON).
    status: int = 200
    error_message: str = ""
    error_type: str = ""
    retry_after: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    # Close the connection (no finish, no terminating chunk) after N content chunks.
    cut_after: int | None = None
    # Stop sending after N content chunks and wait until the client disconnects.
    stall_after: int | None = None
    # Send the API's in-stream error event after N content chunks, then end the stream.
    error_after: int | None = None
    # (input_tokens, output_tokens); default: words of the request / of the reply.
    usage: tuple[int, int] | None = None
    # The API's own finish value ("length", "max_tokens", ...); default from the content.
    finish_reason: str | None = None

    @classmethod
    def error(
        cls,
        status: int,
        message: str = "",
        *,
        retry_after: str | float | None = None,
        error_type: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """An error response with `status` in the API's error JSON shape."""
        return cls(
            status=status,
            error_message=message,
            error_type=error_type,
            retry_after=None if retry_after is None else str(retry_after),
            headers=dict(headers or {}),
        )

    def text_pieces(self) -> list[str]:
        """The pieces the text streams in."""
        if self.chunks is not None:
            return [piece for piece in self.chunks if piece]
        return split_words(self.text)

    def full_text(self) -> str:
        """The whole reply text."""
        return "".join(self.chunks) if self.chunks is not None else self.text


@dataclass(frozen=True)
class RecordedRequest:
    """A request the fake server received."""

    method: str
    path: str
    headers: Mapping[str, str]  # names in lower case
    body: bytes

    @property
    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def api(self) -> Api | None:
        """Which API the path belongs to."""
        return _api_for(self.path)

    @property
    def api_key(self) -> str:
        """The key sent: `Authorization: Bearer <key>` (OpenAI) or `x-api-key` (Anthropic)."""
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return self.headers.get("x-api-key", "")


def _api_for(path: str) -> Api | None:
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith("/chat/completions"):
        return "openai"
    if path.endswith("/messages"):
        return "anthropic"
    return None


@dataclass(frozen=True)
class _Event:
    data: bytes
    content: bool = False


class _Connection:
    """Buffered reading of HTTP/1.1 requests from one client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()

    async def _fill(self) -> bool:
        data = await self.reader.read(65536)
        if not data:
            return False
        self.buffer += data
        return True

    async def _read_until(self, marker: bytes, limit: int) -> bytes | None:
        while (at := self.buffer.find(marker)) < 0:
            if len(self.buffer) > limit:
                raise ValueError("request head too large")
            if not await self._fill():
                return None
        data = bytes(self.buffer[:at])
        del self.buffer[: at + len(marker)]
        return data

    async def _read_exact(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not await self._fill():
                return None
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_request(self) -> RecordedRequest | None:
        """The next request, or None when the client closed the connection."""
        head = await self._read_until(b"\r\n\r\n", _MAX_HEAD_BYTES)
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size_line = await self._read_until(b"\r\n", _MAX_HEAD_BYTES)
                if size_line is None:
                    return None
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    while (trailer := await self._read_until(b"\r\n", _MAX_HEAD_BYTES)) != b"":
                        if trailer is None:
                            return None
                    break
                part = await self._read_exact(size + 2)
                if part is None:
                    return None
                parts.append(part[:-2])
            body = b"".join(parts)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length > _MAX_BODY_BYTES:
                raise ValueError("request body too large")
            data = await self._read_exact(length)
            if data is None:
                return None
            body = data
        return RecordedRequest(method=method, path=path, headers=headers, body=body)

    async def wait_closed_by_peer(self) -> None:
        """Returns when the client closes its side (keeps any bytes it sends)."""
        while await self._fill():
            pass

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


def _count_words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, dict):
        return sum(_count_words(value.get(key)) for key in ("content", "text") if key in value)
    return 0


def _input_words(body: Mapping[str, Any]) -> int:
    return _count_words(body.get("messages", [])) + _count_words(body.get("system", ""))


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FakeModelServer:
    """The fake model server. Start it with `start()` (or `with`), stop it
    with `stop()`. All methods are thread-safe."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        expected_api_key: str | None = None,
        default_reply: Reply | None = None,
    ) -> None:
        self.host = host
        # When set, a request with another key gets 401 in the API's format.
        self.expected_api_key = expected_api_key
        # Served when the queue is empty.
        self.default_reply = default_reply or Reply(text="Hello from the fake model.")
        self._cond = threading.Condition()
        self._queue: deque[Reply] = deque()
        self._requests: list[RecordedRequest] = []
        self._disconnects = 0
        self._completed = 0
        self._counter = itertools.count(1)
        self._port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._start_error: BaseException | None = None

    # -- life cycle ---------------------------------------------------------

    def start(self) -> Self:
        """Starts serving in a background thread; returns when it listens."""
        if self._thread is not None:
            raise RuntimeError("the fake model server is already started")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="fake-model-server", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake model server did not start within 10 s")
        if self._start_error is not None:
            raise RuntimeError("the fake model server failed to start") from self._start_error
        return self

    def stop(self) -> None:
        """Stops serving and drops every open connection."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        return self._port

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        return f"http://{self.host}:{self._port}"

    @property
    def openai_base_url(self) -> str:
        """The `base_url` for the openai provider / SDK (`<url>/v1`)."""
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The `base_url` for the anthropic provider / SDK (`<url>`; the SDK adds `/v1`)."""
        return self.url

    # -- scripting and inspection -------------------------------------------

    def enqueue(self, *replies: Reply) -> None:
        """Queues replies; each request takes the next one."""
        with self._cond:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """Queued replies not served yet."""
        with self._cond:
            return len(self._queue)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first."""
        with self._cond:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        """The latest request (AssertionError if none came)."""
        with self._cond:
            assert self._requests, "the fake model server received no request"
            return self._requests[-1]

    @property
    def disconnects(self) -> int:
        """Streams the client abandoned (closed the connection) before they finished."""
        with self._cond:
            return self._disconnects

    @property
    def completed_streams(self) -> int:
        """Streams sent to the end."""
        with self._cond:
            return self._completed

    def reset(self) -> None:
        """Forgets queued replies, requests and counters."""
        with self._cond:
            self._queue.clear()
            self._requests.clear()
            self._disconnects = 0
            self._completed = 0

    def wait_for_disconnects_blocking(self, count: int = 1, within_s: float = 5.0) -> None:
        """Blocks until `disconnects >= count`; TimeoutError after `within_s` s."""
        self._wait_blocking(lambda: self._disconnects >= count, within_s, f"{count} disconnect(s)")

    def wait_for_requests_blocking(self, count: int = 1, within_s: float = 5.0) -> None:
        """Blocks until `count` requests came; TimeoutError after `within_s` s."""
        self._wait_blocking(lambda: len(self._requests) >= count, within_s, f"{count} request(s)")

    async def wait_for_disconnects(self, count: int = 1, within_s: float = 5.0) -> None:
        """Waits until `disconnects >= count`; TimeoutError after `within_s` s."""
        await self._wait_async(
            lambda: self._disconnects >= count, within_s, f"{count} disconnect(s)"
        )

    async def wait_for_completed_streams(self, count: int = 1, within_s: float = 5.0) -> None:
        """Waits until `count` streams were sent to the end (the server counts
        a stream after its last write, which can trail the client's read)."""
        await self._wait_async(
            lambda: self._completed >= count, within_s, f"{count} completed stream(s)"
        )

    async def wait_for_requests(self, count: int = 1, within_s: float = 5.0) -> None:
        """Waits until `count` requests came; TimeoutError after `within_s` s."""
        await self._wait_async(
            lambda: len(self._requests) >= count, within_s, f"{count} request(s)"
        )

    def _wait_blocking(self, ready: Callable[[], bool], within_s: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(ready, within_s):
                raise TimeoutError(
                    f"fake model server: no {what} within {within_s} s; {self._state()}"
                )

    async def _wait_async(self, ready: Callable[[], bool], within_s: float, what: str) -> None:
        deadline = time.monotonic() + within_s
        while True:
            with self._cond:
                if ready():
                    return
                state = self._state()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"fake model server: no {what} within {within_s} s; {state}")
            await asyncio.sleep(0.01)

    def _state(self) -> str:
        return (
            f"requests={len(self._requests)} disconnects={self._disconnects} "
            f"completed={self._completed} queued={len(self._queue)}"
        )

    def _take_reply(self, request: RecordedRequest) -> Reply:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()
            return self._queue.popleft() if self._queue else self.default_reply

    def _count(self, *, disconnect: bool) -> None:
        with self._cond:
            if disconnect:
                self._disconnects += 1
            else:
                self._completed += 1
            self._cond.notify_all()

    # -- the server ----------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        except BaseException as exc:
            self._start_error = exc
            ready.set()
        finally:
            loop.close()

    async def _main(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, self.host, 0)
        self._port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        # Make drain() wait until the bytes left: a cut or a stall then happens
        # after the client could read everything sent before it.
        writer.transport.set_write_buffer_limits(0)
        conn = _Connection(reader, writer)
        try:
            while True:
                request = await conn.read_request()
                if request is None:
                    break
                keep_alive = await self._respond(conn, request)
                if not keep_alive or request.headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, ValueError):
            pass
        except asyncio.CancelledError:
            # Only stop() cancels a connection; end quietly (asyncio's stream
            # callback would report a cancelled handler as an error).
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, conn: _Connection, request: RecordedRequest) -> bool:
        api = request.api
        if request.method != "POST" or api is None:
            self._record(request)
            await self._send_json(
                conn, 404, {"error": {"message": f"no route {request.method} {request.path}"}}
            )
            return True
        try:
            body = request.json
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            self._record(request)
            await self._send_error(conn, api, Reply.error(400, "the body is not a JSON object"))
            return True
        if self.expected_api_key is not None and request.api_key != self.expected_api_key:
            self._record(request)
            await self._send_error(conn, api, Reply.error(401))
            return True
        reply = self._take_reply(request)
        if reply.status >= 400:
            await self._send_error(conn, api, reply)
            return True
        number = next(self._counter)
        if body.get("stream"):
            return await self._stream(conn, api, body, reply, number)
        payload = (
            self._openai_message(body, reply, number)
            if api == "openai"
            else self._anthropic_message(body, reply, number)
        )
        await self._send_json(conn, 200, payload, reply.headers)
        return True

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

    async def _send_json(
        self,
        conn: _Connection,
        status: int,
        payload: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        body = json.dumps(payload).encode()
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            "content-type: application/json",
            f"content-length: {len(body)}",
        ]
        head += [f"{name}: {value}" for name, value in (headers or {}).items()]
        await conn.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    async def _send_error(self, conn: _Connection, api: Api, reply: Reply) -> None:
        headers = dict(reply.headers)
        if reply.retry_after is not None:
            headers["retry-after"] = reply.retry_after
        await self._send_json(conn, reply.status, self._error_body(api, reply), headers)

    def _error_body(self, api: Api, reply: Reply) -> dict[str, Any]:
        status = reply.status
        if api == "openai":
            fallback = _OPENAI_ERRORS[500] if status >= 500 else _OPENAI_ERRORS[400]
            kind, code, message = _OPENAI_ERRORS.get(status, fallback)
            return {
                "error": {
                    "message": reply.error_message or message,
                    "type": reply.error_type or kind,
                    "param": None,
                    "code": code,
                }
            }
        fallback_a = _ANTHROPIC_ERRORS[500] if status >= 500 else _ANTHROPIC_ERRORS[400]
        kind, message = _ANTHROPIC_ERRORS.get(status, fallback_a)
        return {
            "type": "error",
            "error": {"type": reply.error_type or kind, "message": reply.error_message or message},
            "request_id": f"req_fake_{next(self._counter)}",
        }

    # -- streams --------------------------------------------------------------

    async def _stream(
        self, conn: _Connection, api: Api, body: dict[str, Any], reply: Reply, number: int
    ) -> bool:
        head = [
            "HTTP/1.1 200 OK",
            "content-type: text/event-stream; charset=utf-8",
            "cache-control: no-cache",
            "transfer-encoding: chunked",
        ]
        head += [f"{name}: {value}" for name, value in reply.headers.items()]
        await conn.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        events = (
            self._openai_events(body, reply, number)
            if api == "openai"
            else self._anthropic_events(body, reply, number)
        )
        interrupt = _interrupt_index(events, reply)
        peer_gone: asyncio.Task[None] = asyncio.ensure_future(conn.wait_closed_by_peer())
        try:
            for position, event in enumerate(events):
                if position == interrupt:
                    if reply.cut_after is not None:
                        return False  # the caller closes the connection, unfinished
                    if reply.stall_after is not None:
                        await peer_gone
                        self._count(disconnect=True)
                        return False
                    if reply.error_after is not None:
                        await conn.send(_chunked(self._stream_error(api, reply)))
                        break
                if reply.chunk_delay_s > 0:
                    await asyncio.wait([peer_gone], timeout=reply.chunk_delay_s)
                if peer_gone.done():
                    self._count(disconnect=True)
                    return False
                await conn.send(_chunked(event.data))
            await conn.send(b"0\r\n\r\n")
        except ConnectionError:
            self._count(disconnect=True)
            return False
        finally:
            peer_gone.cancel()
            await asyncio.wait([peer_gone])
            if not peer_gone.cancelled():
                peer_gone.exception()  # retrieved: a reset peer is not an unhandled error
        self._count(disconnect=False)
        return True

    def _stream_error(self, api: Api, reply: Reply) -> bytes:
        if api == "openai":
            error = {
                "message": reply.error_message or "The server had an error.",
                "type": reply.error_type or "server_error",
            }
            return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
        data = {
            "type": "error",
            "error": {
                "type": reply.error_type or "overloaded_error",
                "message": reply.error_message or "Overloaded",
            },
        }
        return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"

    def _usage(self, body: Mapping[str, Any], reply: Reply) -> tuple[int, int]:
        if reply.usage is not None:
            return reply.usage
        return _input_words(body), len(reply.full_text().split()) + len(reply.tool_calls)

    @staticmethod
    def _arg_pieces(call: FakeToolCall, size: int) -> list[str]:
        text = call.arguments_json()
        size = max(1, size)
        return [text[i : i + size] for i in range(0, len(text), size)]

    def _openai_events(self, body: Mapping[str, Any], reply: Reply, number: int) -> list[_Event]:
        base = {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "system_fingerprint": None,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None, content: bool = True) -> _Event:
            data = {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            return _Event(b"data: " + json.dumps(data).encode() + b"\n\n", content)

        events = [chunk({"role": "assistant", "content": ""}, content=False)]
        events += [chunk({"content": piece}) for piece in reply.text_pieces()]
        for j, call in enumerate(reply.tool_calls):
            first = {
                "index": j,
                "id": call.id or f"call_fake_{number}_{j}",
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            events.append(chunk({"tool_calls": [first]}))
            for piece in self._arg_pieces(call, reply.args_chunk_chars):
                events.append(
                    chunk({"tool_calls": [{"index": j, "function": {"arguments": piece}}]})
                )
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        events.append(chunk({}, finish, content=False))
        options = body.get("stream_options") or {}
        if isinstance(options, dict) and options.get("include_usage"):
            prompt, completion = self._usage(body, reply)
            usage = {
                **base,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
            events.append(_Event(b"data: " + json.dumps(usage).encode() + b"\n\n"))
        events.append(_Event(b"data: [DONE]\n\n"))
        return events

    def _anthropic_events(self, body: Mapping[str, Any], reply: Reply, number: int) -> list[_Event]:
        def event(data: dict[str, Any], content: bool = False) -> _Event:
            encoded = json.dumps(data).encode()
            return _Event(
                b"event: " + data["type"].encode() + b"\ndata: " + encoded + b"\n\n", content
            )

        input_tokens, output_tokens = self._usage(body, reply)
        events = [
            event(
                {
                    "type": "message_start",
                    "message": {
                        "id": f"msg_fake_{number}",
                        "type": "message",
                        "role": "assistant",
                        "model": body.get("model", ""),
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                    },
                }
            ),
            event({"type": "ping"}),
        ]
        index = 0
        pieces = reply.text_pieces()
        if pieces:
            events.append(
                event(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    }
                )
            )
            for piece in pieces:
                delta = {"type": "text_delta", "text": piece}
                events.append(
                    event({"type": "content_block_delta", "index": index, "delta": delta}, True)
                )
            events.append(event({"type": "content_block_stop", "index": index}))
            index += 1
        for j, call in enumerate(reply.tool_calls):
            block = {
                "type": "tool_use",
                "id": call.id or f"toolu_fake_{number}_{j}",
                "name": call.name,
                "input": {},
            }
            events.append(
                event({"type": "content_block_start", "index": index, "content_block": block}, True)
            )
            empty = {"type": "input_json_delta", "partial_json": ""}
            events.append(event({"type": "content_block_delta", "index": index, "delta": empty}))
            for piece in self._arg_pieces(call, reply.args_chunk_chars):
                delta = {"type": "input_json_delta", "partial_json": piece}
                events.append(
                    event({"type": "content_block_delta", "index": index, "delta": delta}, True)
                )
            events.append(event({"type": "content_block_stop", "index": index}))
            index += 1
        stop = reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn")
        events.append(
            event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                }
            )
        )
        events.append(event({"type": "message_stop"}))
        return events

    # -- non-streaming answers ---------------------------------------------------

    def _openai_message(self, body: Mapping[str, Any], reply: Reply, number: int) -> dict[str, Any]:
        prompt, completion = self._usage(body, reply)
        message: dict[str, Any] = {"role": "assistant", "content": reply.full_text() or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id or f"call_fake_{number}_{j}",
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json()},
                }
                for j, call in enumerate(reply.tool_calls)
            ]
        return {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": reply.finish_reason
                    or ("tool_calls" if reply.tool_calls else "stop"),
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    def _anthropic_message(
        self, body: Mapping[str, Any], reply: Reply, number: int
    ) -> dict[str, Any]:
        input_tokens, output_tokens = self._usage(body, reply)
        content: list[dict[str, Any]] = []
        if reply.full_text():
            content.append({"type": "text", "text": reply.full_text()})
        for j, call in enumerate(reply.tool_calls):
            content.append(
                {
                    "type": "tool_use",
                    "id": call.id or f"toolu_fake_{number}_{j}",
                    "name": call.name,
                    "input": call.arguments_object(),
                }
            )
        return {
            "id": f"msg_fake_{number}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": content,
            "stop_reason": reply.finish_reason or ("tool_use" if reply.tool_calls else "end_turn"),
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }


def _interrupt_index(events: Sequence[_Event], reply: Reply) -> int | None:
    """Before which event the reply's cut, stall or error happens (None: never)."""
    limits = [n for n in (reply.cut_after, reply.stall_after, reply.error_after) if n is not None]
    if not limits:
        return None
    limit = max(0, min(limits))
    content = [i for i, event in enumerate(events) if event.content]
    if limit < len(content):
        return content[limit]
    if content:
        return content[-1] + 1
    return 1
