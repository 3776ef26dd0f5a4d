"""Errors the Serve proxy sends itself, in the same JSON shape as the apps' errors.

When a deployment's queue is full (``max_queued_requests``) or no replica is up, or a
request times out, Ray Serve's HTTP proxy answers before any ctray code runs, with a
plain-text body (``Request dropped due to backpressure``) and no ``Retry-After``.
``JSONErrorMiddleware`` wraps the proxy and turns such answers (408, 429, 503 with a
text body) into ``{"detail": "..."}`` like FastAPI's ``HTTPException`` responses, and
gives every 503 a ``Retry-After`` header (``RETRY_AFTER_S`` unless one is set), so
clients can handle every error one way.

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

        async def relay(message):
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
                names = {k.lower() for k, _ in headers}
                if status == 503 and b"retry-after" not in names:
                    headers.append((b"retry-after", self.retry_after))
                ctype = dict((k.lower(), v) for k, v in headers).get(b"content-type", b"")
                message = {**message, "headers": headers}
                if status in PROXY_ERRORS and not ctype.startswith(b"application/json"):
                    held["start"] = message  # rewrite the body once it is complete
                    return
                return await send(message)
            if held and message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                detail = b"".join(body).decode("utf-8", "replace").strip()
                payload = json.dumps({"detail": detail or "service unavailable"}).encode()
                start = held["start"]
                headers = [(k, v) for k, v in start["headers"]
                           if k.lower() not in (b"content-type", b"content-length")]
                headers += [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]
                await send({**start, "headers": headers})
                return await send({"type": "http.response.body", "body": payload})
            return await send(message)

        return await self.app(scope, receive, relay)


def middlewares() -> list:
    """The proxy middlewares ctray uses (see the module docstring)."""
    from starlette.middleware import Middleware

    return [Middleware(JSONErrorMiddleware)]
