"""API keys and the request rate limit: which routes need a key, where keys come from, the check.

Keys come from ``TWOTOWER_SERVE__API_KEYS`` (comma-separated) and
``TWOTOWER_SERVE__API_KEYS_FILE`` (one key per line; blank lines and ``#``
comments ignored). The file is looked at again at most once a second, on a
request, and re-read when its identity (device, inode, size, mtime, ctime)
changed, so keys rotate without a restart. ``os.stat`` follows symlinks, so a
Kubernetes Secret volume, which swaps its ``..data`` symlink to a new
directory, is seen as a new file. A key file that cannot be read any more
keeps the keys last read (logged); one that holds no key leaves no key valid
(every protected request is refused: fail closed).

Clients send ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The
presented key is hashed (SHA-256) and compared with ``hmac.compare_digest``
against the digest of every configured key, without stopping at a match, so
neither which key matched nor how long the keys are shows in the timing. Keys
are never logged, never echoed in an error, never a metrics label: a request
is told only whether its key was missing, malformed or unknown.

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

import hashlib
import hmac
import json
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.routing import compile_path

from common.config import ConfigError
from serving.ratelimit import RateLimiter

log = logging.getLogger(__name__)

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
#: How often the key file is looked at (at most; only when requests come).
KEY_FILE_CHECK_S = 1.0
MIN_PRODUCTION_KEY_LENGTH = 16
PLACEHOLDER_MARKERS = ("change-me", "changeme", "change_me", "placeholder", "replace-me")
REALM = 'Bearer realm="twotower"'


class KeyConfigError(ConfigError):
    """The configured keys cannot be used (unreadable file, no key, weak key in production)."""


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


def key_problem(key: str, production: bool) -> str | None:
    """Why ``key`` cannot be an API key (None: it can). Never includes the key."""
    if not all(0x21 <= ord(ch) <= 0x7E for ch in key):
        return "a key must be printable ASCII without spaces or control characters"
    if production:
        if any(marker in key.lower() for marker in PLACEHOLDER_MARKERS):
            return "is still a placeholder; set a real secret"
        if len(key) < MIN_PRODUCTION_KEY_LENGTH:
            return (
                f"shorter than {MIN_PRODUCTION_KEY_LENGTH} characters "
                "(environment=production; use e.g. `openssl rand -hex 32`)"
            )
    return None


def parse_key_file(text: str, where: str, production: bool) -> tuple[list[str], list[str]]:
    """(keys, problems naming ``where:line``) of a key file's text."""
    keys: list[str] = []
    problems: list[str] = []
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        why = key_problem(line, production)
        if why is None:
            keys.append(line)
        else:
            problems.append(f"{where}:{no}: {why}")
    return keys, problems


def parse_key_list(text: str, where: str, production: bool) -> tuple[list[str], list[str]]:
    """(keys, problems naming ``where`` and the key's position) of a comma-separated list."""
    keys: list[str] = []
    problems: list[str] = []
    for n, raw in enumerate(text.split(","), start=1):
        key = raw.strip()
        if not key:
            continue
        why = key_problem(key, production)
        if why is None:
            keys.append(key)
        else:
            problems.append(f"{where}: key #{n}: {why}")
    return keys, problems


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class KeyRing:
    """The valid API keys (as SHA-256 digests): the static list plus the key file, kept current.

    Args:
      static_keys: keys from ``TWOTOWER_SERVE__API_KEYS``.
      path: the key file (None: none).
      production: apply the production rules (length, placeholders) to the file's keys.
      clock: monotonic seconds (injectable for tests).
      check_every_s: the file is stat'ed at most this often.
    """

    def __init__(
        self,
        static_keys: Iterable[str] = (),
        path: Path | None = None,
        *,
        production: bool = False,
        clock: Callable[[], float] = time.monotonic,
        check_every_s: float = KEY_FILE_CHECK_S,
    ) -> None:
        self._static = tuple(_digest(k.encode("ascii")) for k in static_keys)
        self.path = path
        self.production = production
        self._clock = clock
        self._check_every_s = check_every_s
        self._file_keys: tuple[bytes, ...] = ()
        self._identity: tuple[int, ...] | None = None
        self._next_check = 0.0
        self._last_error: str | None = None
        self.reloads = 0

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> KeyRing:
        """The key ring of ``settings``, its file read once; raises KeyConfigError (exit 2)."""
        production = settings.environment == "production"
        static: list[str] = []
        if settings.api_keys is not None:
            static, problems = parse_key_list(
                settings.api_keys.get_secret_value(), "TWOTOWER_SERVE__API_KEYS", production
            )
            if problems:
                raise KeyConfigError("; ".join(problems))
        ring = cls(static, settings.api_keys_file, production=production, **kwargs)
        if ring.path is not None:
            ring.load_file()
        if settings.has_key_source and not len(ring):
            source = (
                f"TWOTOWER_SERVE__API_KEYS_FILE {ring.path}"
                if ring.path is not None
                else "TWOTOWER_SERVE__API_KEYS"
            )
            raise KeyConfigError(f"{source}: holds no API key")
        return ring

    def __len__(self) -> int:
        return len(self._static) + len(self._file_keys)

    def load_file(self) -> None:
        """Read the key file now (start-up): raises KeyConfigError naming the file and line."""
        assert self.path is not None
        try:
            st = os.stat(self.path)
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise KeyConfigError(
                f"TWOTOWER_SERVE__API_KEYS_FILE {self.path}: cannot read it ({reason})"
            ) from None
        keys, problems = parse_key_file(text, str(self.path), self.production)
        if problems:
            raise KeyConfigError("; ".join(problems))
        self._file_keys = tuple(_digest(k.encode("ascii")) for k in keys)
        self._identity = _identity(st)
        self._next_check = self._clock() + self._check_every_s

    def refresh(self) -> None:
        """Re-read the key file if it changed (looked at no more than once per ``check_every_s``)."""
        if self.path is None:
            return
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self._check_every_s
        try:
            st = os.stat(self.path)
            if _identity(st) == self._identity:
                return
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            error = f"API key file {self.path}: cannot read it ({reason}); keeping the {len(self._file_keys)} key(s) read before"
            if error != self._last_error:
                log.error("%s", error)
                self._last_error = error
            return
        self._last_error = None
        keys, problems = parse_key_file(text, str(self.path), self.production)
        for problem in problems:
            log.error("API key ignored: %s", problem)
        self._file_keys = tuple(_digest(k.encode("ascii")) for k in keys)
        self._identity = _identity(st)
        self.reloads += 1
        if keys:
            log.info("API key file %s re-read: %d key(s)", self.path, len(keys))
        else:
            log.error(
                "API key file %s re-read: it holds no key; requests that need one are refused",
                self.path,
            )

    def match(self, presented: bytes) -> bytes | None:
        """The digest of the configured key equal to ``presented``, or None.

        Every configured key is compared (constant time per key, no early exit).
        """
        self.refresh()
        digest = _digest(presented)
        found: bytes | None = None
        for known in self._static + self._file_keys:
            if hmac.compare_digest(digest, known):
                found = known
        return found


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
