"""Prometheus metrics of one app instance (own registry, so several apps can live in one process).

With several uvicorn workers each process exposes its own figures; scrape
them per pod (one worker per pod is the Kubernetes layout in deploy/).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from starlette.exceptions import HTTPException

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


class Metrics:
    """All serving metrics, registered in ``self.registry``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.latency = Histogram(
            "twotower_http_request_duration_seconds",
            "HTTP request latency by route template and status code",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.filtered = Counter(
            "twotower_filtered_items_total",
            "Candidates dropped by filtering (dislikes, exclude, seen)",
            registry=r,
        )
        self.widened = Counter(
            "twotower_search_widenings_total",
            "Extra FAISS searches needed to keep k after filtering",
            registry=r,
        )
        self.exact = Counter(
            "twotower_exact_fallbacks_total",
            "Queries answered by exact catalog scoring after the index ran dry",
            registry=r,
        )
        self.demoted = Counter(
            "twotower_demoted_items_total",
            "Items pushed out of the top k by soft demotion",
            registry=r,
        )
        self.fallbacks = Counter(
            "twotower_fallbacks_total", "Recommendations served by a fallback", ["kind"], registry=r
        )
        self.degraded = Counter(
            "twotower_degraded_responses_total",
            "Responses served without the online store",
            ["route"],
            registry=r,
        )
        self.ignored_items = Counter(
            "twotower_ignored_item_ids_total", "Unknown item ids in requests (ignored)", registry=r
        )
        self.events = Counter(
            "twotower_events_total", "Events written via /v1/events", ["outcome"], registry=r
        )
        self.model_info = Info("twotower_model", "The model version being served", registry=r)
        self.index_size = Gauge(
            "twotower_index_items", "Items in the served FAISS index", registry=r
        )
        self.reloads = Counter(
            "twotower_model_reloads_total", "Model loads", ["outcome"], registry=r
        )
        self.batch_size = Histogram(
            "twotower_batch_size",
            "Queries per tower call / FAISS search",
            buckets=BATCH_BUCKETS,
            registry=r,
        )

    def set_model(self, version: str, num_items: int, device: str, index_type: str) -> None:
        self.model_info.info({"version": version, "device": device, "index_type": index_type})
        self.index_size.set(num_items)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


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
        body = (
            b'{"error":"payload_too_large","detail":"request body is '
            + size.encode()
            + b" bytes; the limit is "
            + str(self.max_body_bytes).encode()
            + b' bytes (TWOTOWER_SERVE_MAX_BODY_BYTES)"}'
        )
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
