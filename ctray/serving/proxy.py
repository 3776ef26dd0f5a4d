"""Errors the Serve proxy sends itself, in the same JSON shape as the apps' errors.

When a deployment's queue is full (``max_queued_requests``) or no replica is up, or a
request times out, Ray Serve's HTTP proxy answers before any ctray code runs, with a
plain-text body (``Request dropped due to backpressure``) and no ``Retry-After``.
``JSONErrorMiddleware`` wraps the proxy and turns such answers (408, 429, 503 with a
text body) into ``{"detail": "..."}`` like FastAPI's ``HTTPException`` responses, and
gives every 503 a ``Retry-After`` header (``RETRY_AFTER_S`` unless one is set), so
clients can handle every error one way.

A plain-text 500 is the proxy's own answer too: every ctray app answers its errors in JSON
(``service_api`` installs a JSON handler for unhandled exceptions), so a text 500 means
the request was lost outside the app, typically because the replica handling it died
with its node (a spot preemption; ``tests/test_cluster_chaos.py`` reproduces it). The
request did not complete and labeling is idempotent, so it becomes a 503 with
``Retry-After``: clients retry it instead of treating it as a server bug.

It runs in the proxy actor, not in the replicas, and is enabled by
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=ctray.serving.proxy:middlewares`` in the proxy's
environment, read when the proxy starts. Every shipped ``serve/*.yaml`` sets it in
``controller_options.runtime_env.env_vars``: the proxies the Serve controller starts inherit
it. (Ray 2.60 removed ``http_options.middlewares``; this variable is the proxy's one hook.)
"""

from __future__ import annotations

import json
from typing import Any

RETRY_AFTER_S = 1
PROXY_ERRORS = (408, 429, 503)
#: detail of a request lost with its replica (the proxy's plain-text 500)
REPLICA_LOST = ("the replica handling this request stopped before answering (for example, "
                "its node was lost); retry the request")


class JSONErrorMiddleware:
    """Pure ASGI middleware (streams every other response through untouched)."""

    def __init__(self, app: Any, retry_after_s: int = RETRY_AFTER_S):
        self.app = app
        self.retry_after = str(retry_after_s).encode()

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        held: dict[str, Any] = {}
        body: list[bytes] = []
        started = False  # the proxy began an answer (sent or held for rewriting)

        async def relay(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
                ctype = dict((k.lower(), v) for k, v in headers).get(b"content-type", b"")
                from_proxy = not ctype.startswith(b"application/json")
                if status == 500 and from_proxy:
                    status = 503
                    held["detail"] = REPLICA_LOST
                names = {k.lower() for k, _ in headers}
                if status == 503 and b"retry-after" not in names:
                    headers.append((b"retry-after", self.retry_after))
                message = {**message, "status": status, "headers": headers}
                if status in PROXY_ERRORS and from_proxy:
                    held["start"] = message  # rewrite the body once it is complete
                    return
                return await send(message)
            if "start" in held and message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                detail = held.get("detail") or b"".join(body).decode("utf-8", "replace").strip()
                start = held["start"]
                headers = [(k, v) for k, v in start["headers"]
                           if k.lower() not in (b"content-type", b"content-length")]
                return await _send_json(send, start["status"], headers,
                                        detail or "service unavailable")
            return await send(message)

        try:
            await self.app(scope, receive, relay)
        except Exception:
            # The proxy raised instead of answering (the replica's actor died with the
            # request in flight): uvicorn would send a bare text 500 and close.
            if started:
                raise
            await self._send_lost(send)
            return
        if not started:
            # Returned without answering at all (seen when a replica's node is killed
            # mid-request): uvicorn would send a bare text 500 and close.
            await self._send_lost(send)

    async def _send_lost(self, send) -> None:
        await _send_json(send, 503, [(b"retry-after", self.retry_after)], REPLICA_LOST)


async def _send_json(send, status: int, headers: list, detail: str) -> None:
    """One ``{"detail": ...}`` answer: ``headers`` plus the JSON content type and length."""
    payload = json.dumps({"detail": detail}).encode()
    headers = [*headers, (b"content-type", b"application/json"),
               (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def middlewares() -> list:
    """The proxy middlewares ctray uses (see the module docstring)."""
    from starlette.middleware import Middleware

    return [Middleware(JSONErrorMiddleware)]
