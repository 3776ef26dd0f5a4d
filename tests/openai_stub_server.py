"""A tiny OpenAI-compatible chat server for tests (stdlib only, runs in a thread).

    with StubOpenAIServer(responder=lambda body: "yes") as server:
        cfg = backend_config(kind="openai", base_url=server.base_url, model="stub")

``responder(body) -> str`` gets the request JSON and returns the reply text (it may
sleep to simulate a slow model, or raise to produce a 500). Failures are scripted
with ``fail_statuses``: the first requests get those HTTP statuses, in order, before
the server starts answering. Usage is counted in whitespace-separated words
(``count_tokens``) so a test can compute the expected totals itself.

The server records every request body (``requests``), the number of responses by
status (``status_counts``) and the largest number of requests in flight at once
(``max_in_flight``), for concurrency-limit checks.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

Responder = Callable[[dict[str, Any]], str]


def count_tokens(text: str) -> int:
    return len(text.split())


def prompt_token_count(body: dict[str, Any]) -> int:
    return sum(count_tokens(m.get("content") or "") for m in body.get("messages", []))


def echo_last_user(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1]["content"] if users else ""


def first_choice(body: dict[str, Any]) -> str:
    """Answers a guided-choice request with its first option (vLLM-server style body)."""
    structured = body.get("structured_outputs") or {}
    choices = structured.get("choice") or body.get("guided_choice")
    return choices[0] if choices else echo_last_user(body)


class StubOpenAIServer:
    def __init__(self, responder: Responder = echo_last_user, *,
                 fail_statuses: Iterable[int] = (), retry_after: float | None = None,
                 model: str = "stub-model", host: str = "127.0.0.1", port: int = 0):
        self.responder = responder
        self.model = model
        self.retry_after = retry_after
        self._failures = list(fail_statuses)
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.status_counts: Counter[int] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle --
    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "StubOpenAIServer":
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "StubOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def fail_next(self, *statuses: int) -> None:
        with self._lock:
            self._failures.extend(statuses)

    @property
    def answered(self) -> int:
        return self.status_counts.get(200, 0)

    # -- request handling --
    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                with server._lock:
                    server.status_counts[status] += 1

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [
                        {"id": server.model, "object": "model", "owned_by": "stub"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                with server._lock:
                    server.requests.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    status = server._failures.pop(0) if server._failures else None
                try:
                    if status is not None:
                        headers = ({"Retry-After": str(server.retry_after)}
                                   if server.retry_after is not None else {})
                        kind = "rate_limit_exceeded" if status == 429 else "server_error"
                        self._send(status, {"error": {"message": f"scripted {status}",
                                                      "type": kind, "code": kind}}, headers)
                        return
                    try:
                        text = server.responder(body)
                    except Exception as exc:  # noqa: BLE001 - a responder bug is a 500
                        self._send(500, {"error": {"message": f"responder failed: {exc}",
                                                   "type": "server_error"}})
                        return
                    self._send(200, server.completion(body, text))
                finally:
                    with server._lock:
                        server.in_flight -= 1

        return Handler

    def completion(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        prompt_tokens = prompt_token_count(body)
        completion_tokens = count_tokens(text)
        return {
            "id": f"chatcmpl-stub-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
