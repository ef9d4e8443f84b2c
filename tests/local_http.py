"""A stdlib JSON HTTP server on 127.0.0.1 for tests that talk to OpenAI-compatible endpoints."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JSONHandler(BaseHTTPRequestHandler):
    """Quiet handler with a JSON reply helper; subclasses define do_GET / do_POST."""

    def log_message(self, *a):
        return None

    def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))


class _Server(ThreadingHTTPServer):
    # The backends open up to `concurrency` connections at once; socketserver's default listen
    # backlog of 5 overflowed under load and the kernel reset connections (a flaky ReadError in
    # a test that allows no retries).
    request_queue_size = 128


class LocalServer:
    """Serves `handler` on a free port in a daemon thread; `url` is the OpenAI-style base URL."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.server = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
