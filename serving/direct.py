"""``POST /v1/recommend`` answered without FastAPI's routing and dependency resolution.

Under load the event loop's thread is what limits a worker, and about a fifth of
its time per request went to the layers between the ASGI call and the route's
own code: the exception and exit-stack middlewares, route matching, the
request/response wrapper and ``solve_dependencies`` (three dependencies and the
body parameter), each a few coroutine frames. This pure ASGI middleware sits
inside the app's own middlewares (access control, body limit, latency
histogram: they run as before) and answers a *well-formed* recommend request
itself, with the route's code: the same body model, the same limits, the same
:func:`serving.service.recommend` and the same encoder.

Anything else goes to the app unchanged, with the body it has read replayed:
another route or method, a server run under a root path (``--root-path``),
a body that is not declared JSON or does not validate, a limit broken, no
model loaded. So every error answer (415, 422, 503, ...) is the app's own, and
the OpenAPI document still describes the route. An exception raised while
answering goes to the handler the app registered for its class (as the app's
exception middleware would), or up to its server-error middleware (500).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_json
from starlette.requests import Request
from starlette.types import ASGIApp, HTTPExceptionHandler, Message, Receive, Scope, Send

from serving import service
from serving.deps import AppState
from serving.routes import RECOMMEND_PATH, InputError, checked_k, is_json
from serving.schemas import RecommendRequest

_JSON_HEADERS = [(b"content-type", b"application/json")]


class DirectRecommend:
    """Pure ASGI: well-formed ``POST /v1/recommend`` requests answered here (module docstring).

    ``handlers``: the app's exception handlers by class (``app.exception_handlers``),
    read when an answer raises. ``route``: the app's route object for the path, put
    in the scope as the router would (the latency histogram labels by it).
    """

    def __init__(
        self,
        app: ASGIApp,
        state: AppState,
        handlers: Mapping[Any, Any],
        route: object,
    ) -> None:
        self.app = app
        self.state = state
        self.handlers = handlers
        self.route = route
        self.answered = 0
        """Requests answered here (the rest went to the app): for tests and debugging."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != RECOMMEND_PATH
            or scope["method"] != "POST"
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        model = self.state.holder.current
        content_type = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
                break
        if model is None or not is_json(content_type):
            await self.app(scope, receive, send)  # 503 / 415 / an empty body: the app's answer
            return
        received, accepted = await self._accept(receive)
        if accepted is None:
            await self.app(scope, _replay(received, receive), send)
            return
        req, k = accepted
        scope["route"] = self.route
        self.answered += 1
        try:
            body = await service.recommend(self.state, model, req, k)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = handler(Request(scope, receive), exc)
            if inspect.isawaitable(response):
                response = await response
            await response(scope, receive, send)
            return
        data = to_json(body)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})

    async def _accept(
        self, receive: Receive
    ) -> tuple[list[Message], tuple[RecommendRequest, int] | None]:
        """Read the body: the messages received, and the request with its k, or None where
        the app must answer (a disconnect, a body that does not validate, a limit broken)."""
        received: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                return received, None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        req = _parse(b"".join(chunks))
        if req is None:
            return received, None
        try:
            return received, (req, checked_k(req, self.state.settings))
        except InputError:
            return received, None

    def _handler(self, exc: Exception) -> HTTPExceptionHandler | None:
        """The app's handler for ``exc``'s class or its nearest base, Exception's excepted
        (the app's server-error middleware applies that one, above the other middlewares)."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in self.handlers:
                return self.handlers[cls]
        return None


def _parse(body: bytes) -> RecommendRequest | None:
    """The body as the route's parameter reads it, or None where the app must answer:
    it does not validate, or it is empty or ``null`` (the app's popular-list answer)."""
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            return None
        return RecommendRequest.model_validate(data)
    except (ValueError, ValidationError, RecursionError):
        return None


def _replay(received: list[Message], receive: Receive) -> Receive:
    """``receive`` that gives ``received`` again first, then reads on."""
    pending = list(received)

    async def again() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return again
