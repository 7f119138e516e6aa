"""ASGI middleware: body size limit (413) and the latency histogram per route template.

Pure ASGI (no ``BaseHTTPMiddleware``), so streaming bodies are counted as they
are read and nothing is buffered twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

from serving.metrics import Metrics

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


class LimitsAndTimingMiddleware:
    """Pure ASGI middleware: 413 for oversized bodies, latency histogram per route template.

    Bodies with a ``Content-Length`` over the limit are refused before they are
    read; chunked bodies are counted while read and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def _reply_413(self, send: Callable[[Any], Awaitable[None]], size: str) -> None:
        body = json.dumps(
            {
                "error": "payload_too_large",
                "detail": f"request body is {size} bytes; the limit is {self.max_body_bytes} "
                "bytes (TWOTOWER_SERVE_MAX_BODY_BYTES)",
                "errors": [],
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reply_413(send, value.decode(errors="replace"))
                    self._observe(scope, 413, start)
                    return

        seen = 0
        limit = self.max_body_bytes
        started = False

        async def counting_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            status["code"] = 413
            await self._reply_413(send, f"more than {limit}")
        finally:
            self._observe(scope, status["code"], start)

    def _observe(self, scope: Scope, status: int, start: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        self.metrics.latency.labels(scope.get("method", ""), template, str(status)).observe(
            time.perf_counter() - start
        )


class _BodyTooLarge(HTTPException):
    """Raised inside ``receive`` when a streamed body passes the limit (FastAPI re-raises HTTPException)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"request body is larger than the limit of {limit} bytes (TWOTOWER_SERVE_MAX_BODY_BYTES)",
        )
