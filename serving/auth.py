"""API keys and the request rate limit: which routes need a key, and the check.

Where the keys come from, how they rotate and how a presented key is compared:
:mod:`serving.api_keys`. Clients send ``Authorization: Bearer <key>`` or
``X-API-Key: <key>`` (:func:`credentials`); a request is told only whether its key
was missing, malformed or unknown.

Which routes need a key (:func:`needs_key`): ``auth=writes`` (the default once
a key source is set) ``/v1/events`` and anything under ``/v1/admin``;
``auth=all`` every ``/v1/*`` route; ``auth=none`` nothing. ``/healthz`` and
``/readyz`` never; ``/metrics`` only with ``metrics_auth``. The OpenAPI
document declares the same, from the same function.

:class:`AccessMiddleware` checks both the key and the rate limit
(:mod:`serving.ratelimit`) before the route runs and before the body is read:
a refused request costs a header scan, one hash and a dict lookup.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from starlette.routing import compile_path

from serving.api_keys import KeyRing
from serving.ratelimit import RateLimiter

Scope = MutableMapping[str, Any]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Send], Awaitable[None]]

API_KEY_HEADER = "X-API-Key"
#: OpenAPI security scheme names (components.securitySchemes).
BEARER_SCHEME = "bearerAuth"
API_KEY_SCHEME = "apiKeyHeader"
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    BEARER_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <API key>",
    },
    API_KEY_SCHEME: {
        "type": "apiKey",
        "in": "header",
        "name": API_KEY_HEADER,
        "description": f"{API_KEY_HEADER}: <API key> (same keys as the bearer scheme)",
    },
}
#: Either scheme is enough (OpenAPI: alternatives are separate requirement objects).
SECURITY_REQUIREMENT: list[dict[str, list[str]]] = [{BEARER_SCHEME: []}, {API_KEY_SCHEME: []}]

PROBES = ("/healthz", "/readyz")
METRICS_PATH = "/metrics"
WRITE_PATHS = ("/v1/events",)
ADMIN_PREFIX = "/v1/admin"
API_PREFIX = "/v1/"
REALM = 'Bearer realm="twotower"'


def needs_key(mode: str, metrics_auth: bool, path: str) -> bool:
    """Whether a request to ``path`` (the route path, without a root path) needs an API key."""
    if path == METRICS_PATH:
        return metrics_auth
    if mode == "none" or path in PROBES:
        return False
    if mode == "all":
        return path.startswith(API_PREFIX)
    path = path.rstrip("/")
    return path in WRITE_PATHS or path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def rate_limited(path: str) -> bool:
    """Whether requests to ``path`` count against the rate limit (every ``/v1/*`` route)."""
    return path.startswith(API_PREFIX)


def credentials(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes | None, str | None]:
    """(presented key, problem) from request headers; both None when no key was sent.

    ``Authorization: Bearer <key>`` wins; ``X-API-Key: <key>`` is used when there is no
    Authorization header or it is not a bearer token. The problem never quotes the header.
    """
    authorization = api_key = None
    for name, value in headers:
        if name == b"authorization":
            authorization = value
        elif name == b"x-api-key":
            api_key = value
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer":
            token = token.strip()
            if token:
                return token, None
            return None, "the Authorization header says Bearer but carries no key"
        if api_key is None:
            return None, "the Authorization header is not of the form 'Bearer <key>'"
    if api_key is not None:
        api_key = api_key.strip()
        if api_key:
            return api_key, None
        return None, f"the {API_KEY_HEADER} header is empty"
    return None, None


def route_path(scope: Scope) -> str:
    """The path routing sees: the request path without the app's root path."""
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


class _Labelled:
    """Stands in for the matched route in the scope (``.path``: the template) of a refusal."""

    def __init__(self, path: str) -> None:
        self.path = path


class AccessMiddleware:
    """Pure ASGI: 401 for a protected route without a valid key, 429 past the rate limit.

    Runs inside :class:`serving.middleware.LimitsAndTimingMiddleware` (so refusals are
    timed and counted per route) and before routing, so nothing of a refused
    request's body is read or parsed.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        mode: str,
        metrics_auth: bool,
        keyring: KeyRing,
        limiter: RateLimiter | None,
        metrics: Any,
        templates: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.app = app
        self.mode = mode
        self.metrics_auth = metrics_auth
        self.keyring = keyring
        self.limiter = limiter
        self.metrics = metrics
        self.templates = templates
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Any]], send: Send
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        protect = needs_key(self.mode, self.metrics_auth, path)
        limit = self.limiter is not None and rate_limited(path)
        if not (protect or limit):
            await self.app(scope, receive, send)
            return
        token, problem = credentials(scope.get("headers", ()))
        key = self.keyring.match(token) if token is not None else None
        if limit:
            assert self.limiter is not None
            client = scope.get("client")
            bucket: object = key if key is not None else ("ip", client[0] if client else "")
            wait = self.limiter.take(bucket)
            if wait > 0.0:
                self.metrics.rate_limited.inc()
                await self._refuse(scope, send, 429, *self._too_many(wait))
                return
        if protect and key is None:
            reason = "malformed" if problem else ("unknown" if token is not None else "missing")
            self.metrics.auth_refused.labels(reason).inc()
            await self._refuse(scope, send, 401, *self._unauthorized(reason, problem))
            return
        await self.app(scope, receive, send)

    def _template(self, path: str) -> str | None:
        """The documented path template ``path`` falls under (e.g. ``/v1/items/{item_id}/similar``)."""
        if self._compiled is None:
            self._compiled = [(compile_path(t)[0], t) for t in self.templates()]
        return next((t for regex, t in self._compiled if regex.match(path)), None)

    def _too_many(self, wait: float) -> tuple[dict[str, Any], dict[str, str]]:
        assert self.limiter is not None
        retry = max(1, math.ceil(wait))
        body = {
            "error": "rate_limited",
            "detail": f"too many requests: at most {self.limiter.rate:g} per second (burst "
            f"{self.limiter.burst:g}) per API key or client IP; retry in {retry} s",
            "errors": [],
        }
        return body, {"retry-after": str(retry)}

    def _unauthorized(
        self, reason: str, problem: str | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        how = f"send Authorization: Bearer <key> or {API_KEY_HEADER}: <key>"
        if reason == "missing":
            detail, field, kind = f"this route needs an API key; {how}", "header", "missing_api_key"
            challenge = REALM
        elif reason == "malformed":
            detail, field, kind = f"{problem}; {how}", "header", "malformed_credentials"
            challenge = f'{REALM}, error="invalid_request"'
        else:
            detail = "the API key is not valid on this server (unknown or revoked)"
            field, kind = "header", "invalid_api_key"
            challenge = f'{REALM}, error="invalid_token"'
        body = {
            "error": "unauthorized",
            "detail": detail,
            "errors": [{"field": f"{field}.Authorization", "message": detail, "type": kind}],
        }
        return body, {"www-authenticate": challenge}

    async def _refuse(
        self, scope: Scope, send: Send, status: int, body: dict[str, Any], headers: dict[str, str]
    ) -> None:
        # Label the latency histogram with the route template, as if the route had run.
        template = self._template(route_path(scope))
        if template is not None:
            scope["route"] = _Labelled(template)
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    *((k.encode(), v.encode()) for k, v in headers.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
