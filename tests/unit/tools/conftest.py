"""Fixtures of the tools tests: migrated databases (the storage tests'
`database`, on SQLite and PostgreSQL, and a SQLite-only one) and a local
HTTP endpoint that records what it receives."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from aster.server.storage import migrate
from aster.server.storage.database import Database
from aster.server.storage.tool_repository import ToolRepository
from aster.server.tools.service import ToolService
from tests.unit.storage.conftest import database  # noqa: F401 - the shared fixture

# How long /slow takes to answer; tests use timeouts well below it.
SLOW_S = 3.0


@pytest.fixture
async def sqlite_database(tmp_path: Path) -> AsyncIterator[Database]:
    """A freshly migrated SQLite database, for tests about execution."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'aster.db'}")
    await migrate.upgrade(db)
    yield db
    await db.close()


@pytest.fixture
def tools(sqlite_database: Database) -> ToolService:
    """A tool service on SQLite with no egress allowed."""
    return ToolService(ToolRepository(sqlite_database))


@dataclass
class Received:
    """One request the endpoint received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Endpoint:
    """A local HTTP server: `url(path)` and the requests it has received."""

    base: str
    received: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def last(self) -> Received:
        assert self.received, "the endpoint received no request"
        return self.received[-1]


def _handler(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            endpoint.received.append(
                Received(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
            )
            # The client may have given up already (the timeout tests).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._answer(parts.path, parse_qs(parts.query), body)

        def _answer(self, path: str, query: dict[str, list[str]], body: bytes) -> None:
            if path == "/slow":
                time.sleep(SLOW_S)
                self._send(200, b'{"late": true}')
            elif path == "/big":
                size = int(query.get("bytes", ["0"])[0])
                chunked = query.get("chunked") == ["1"]
                self._send(200, b"x" * size, "text/plain", declare_length=not chunked)
            elif path.startswith("/status/"):
                self._send(int(path.rsplit("/", 1)[1]), b'{"problem": "bad things"}')
            elif path == "/redirect":
                self.send_response(302)
                self.send_header("location", "http://example.invalid/")
                self.send_header("content-length", "0")
                self.end_headers()
            elif path == "/text":
                self._send(200, b"plain words", "text/plain")
            else:  # echo
                payload = {
                    "method": self.command,
                    "query": {k: v[0] for k, v in query.items()},
                    "json": json.loads(body) if body else None,
                }
                self._send(200, json.dumps(payload).encode())

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str = "application/json",
            declare_length: bool = True,
        ) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            if declare_length:
                self.send_header("content-length", str(len(body)))
            else:
                self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

    return Handler


@pytest.fixture(scope="session")
def endpoint_server() -> Iterator[Endpoint]:
    """One local HTTP server for the session."""
    endpoint = Endpoint("")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(endpoint))
    server.daemon_threads = True
    endpoint.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield endpoint
    server.shutdown()
    server.server_close()


@pytest.fixture
def endpoint(endpoint_server: Endpoint) -> Endpoint:
    """The local HTTP server, with no request recorded yet."""
    endpoint_server.received.clear()
    return endpoint_server
