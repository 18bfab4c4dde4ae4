"""A fake OpenAI embeddings endpoint (`POST <anything>/embeddings`) for
tests: answers with hashed bag-of-words vectors in the OpenAI format, or
with the error status a test asks for; records every request body."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from tests.fakes.embedders import bag_of_words


class FakeEmbeddingServer:
    """`with FakeEmbeddingServer() as fake:` serves on a free port;
    `fake.base_url` is the SDK's base URL."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_status = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                owner.requests.append({"path": self.path, "body": body, "headers": self.headers})
                if owner.fail_status or not self.path.endswith("/embeddings"):
                    status = owner.fail_status or 404
                    payload: dict[str, Any] = {
                        "error": {"message": "fake failure", "type": "server_error"}
                    }
                else:
                    status = 200
                    inputs = body["input"]
                    payload = {
                        "object": "list",
                        "model": body["model"],
                        # Reversed, to prove the client orders by `index`.
                        "data": [
                            {"object": "embedding", "index": i, "embedding": bag_of_words(t)}
                            for i, t in reversed(list(enumerate(inputs)))
                        ],
                        "usage": {"prompt_tokens": 1, "total_tokens": 1},
                    }
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI SDK's base URL for this server."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
