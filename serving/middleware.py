"""ASGI middleware: body size limit (413) and the latency histogram per route template.

Pure ASGI (no ``BaseHTTPMiddleware``), so streaming bodies are counted as they
are read and nothing is buffered twice.

The histogram's ``route`` label is the matched API route's template. Routes
that leave no template in the scope (FastAPI's ``/openapi.json``, the mounted
docs assets) are named by ``fixed_routes``: a path equal to one, or under it,
is labelled with it (``/docs-assets`` for every asset file: one series, not
one per file). Anything else is ``unmatched`` (404s: scanners, typos).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
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

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body_bytes: int,
        fixed_routes: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.fixed_routes = tuple(r.rstrip("/") for r in fixed_routes if r.rstrip("/"))
        # The histogram's child per label set, looked up once (labels() costs more than observe()).
        self._series: dict[tuple[str, str, int], Any] = {}

    async def _reply_413(self, send: Callable[[Any], Awaitable[None]], size: str) -> None:
        body = json.dumps(
            {
                "error": "payload_too_large",
                "detail": f"request body is {size} bytes; the limit is {self.max_body_bytes} "
                "bytes (TWOTOWER_SERVE__MAX_BODY_BYTES)",
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
        # Routing rewrites root_path inside mounts: keep the request's own for the label.
        request_path = (scope.get("path", ""), scope.get("root_path", ""))
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reply_413(send, value.decode(errors="replace"))
                    self._observe(scope, request_path, 413, start)
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
            self._observe(scope, request_path, status["code"], start)

    def _observe(
        self, scope: Scope, request_path: tuple[str, str], status: int, start: float
    ) -> None:
        template = getattr(scope.get("route"), "path", None) or self._fixed_route(*request_path)
        key = (scope.get("method", ""), template, status)
        series = self._series.get(key)
        if series is None:
            # Bounded: methods x route templates (fixed set) x status codes.
            series = self._series[key] = self.metrics.latency.labels(key[0], template, str(status))
        series.observe(time.perf_counter() - start)

    def _fixed_route(self, path: str, root_path: str) -> str:
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        for route in self.fixed_routes:
            if path == route or path.startswith(route + "/"):
                return route
        return "unmatched"


class _BodyTooLarge(HTTPException):
    """Raised inside ``receive`` when a streamed body passes the limit (FastAPI re-raises HTTPException)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"request body is larger than the limit of {limit} bytes (TWOTOWER_SERVE__MAX_BODY_BYTES)",
        )
