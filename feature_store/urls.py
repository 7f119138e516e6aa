"""Store URLs and per-backend configuration.

One URL names the backend and its connection settings; keyword options given
to :func:`feature_store.open_store` override the URL's query parameters.

Accepted forms::

    sqlite:///relative/path.sqlite          (three slashes: path relative to the cwd)
    sqlite:////absolute/path.sqlite         (four slashes: absolute path)
    redis://[:password@]host:port/db?socket_timeout=0.5&max_connections=32&prefix=tt
    rediss://[user:password@]host:port/db?...   (TLS)

Common options (query or keyword): ``positives_cap`` (200), ``dislikes_cap``
(1,000,000: every dislike, since serving filters them all), ``seen_cap`` (1000). Redis options: ``socket_timeout`` (seconds, 1.0),
``connect_timeout`` (defaults to socket_timeout), ``retries`` (3 retries
after the first attempt), ``backoff`` (base delay in seconds, 0.05, doubled
per retry, capped at 1 s), ``max_connections`` (32), ``prefix`` ("tt"),
``state_ttl`` (seconds of inactivity after which a user's state expires; 0 =
never, the default), ``idempotency_ttl`` (seconds an event id is remembered,
7 days), ``cluster`` (``true``: the URL names one node of a Redis Cluster), ``ssl_cert_reqs`` (rediss: ``required``/``optional``/``none``).
SQLite options: ``busy_timeout`` (seconds, 10.0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit


class StoreURLError(ValueError):
    """A store URL or option is malformed; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class CommonOptions:
    """Options shared by every backend.

    Attributes:
      positives_cap: most recent positives kept/returned per user.
      dislikes_cap: most recent distinct disliked items kept/returned per user. Serving
        filters every returned dislike (SPEC invariant 1: a disliked item is never
        recommended again), so the default keeps them all; lower it only to bound
        memory for abusive clients, knowing older dislikes then stop being filtered.
      seen_cap: most recent distinct interacted items kept/returned per user.
    """

    positives_cap: int = 200
    dislikes_cap: int = 1_000_000
    seen_cap: int = 1000


@dataclass(frozen=True, slots=True)
class SQLiteConfig(CommonOptions):
    """``sqlite:///path``: the embedded store (one file, WAL mode)."""

    path: str = ""
    busy_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class RedisConfig(CommonOptions):
    """``redis://`` / ``rediss://``: the production store."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ssl_cert_reqs: str = "required"
    socket_timeout: float = 1.0
    connect_timeout: float | None = None
    retries: int = 3
    backoff: float = 0.05
    max_connections: int = 32
    prefix: str = "tt"
    state_ttl: int = 0
    idempotency_ttl: int = 7 * 86400
    cluster: bool = False

    def redacted(self) -> str:
        """The URL without the password, for logs and reports."""
        scheme = "rediss" if self.tls else "redis"
        auth = f"{self.username or ''}:***@" if self.password else ""
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.db}?prefix={self.prefix}"


_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _coerce(cfg_type: type, name: str, value: Any) -> Any:
    """Convert a query-string value to the field's type, or raise StoreURLError."""
    default = {f.name: f for f in fields(cfg_type)}[name].default
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            return {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[
                str(value).lower()
            ]
        if isinstance(default, int) and not isinstance(default, bool):
            return int(value)
        if isinstance(default, float) or name == "connect_timeout":
            return None if value is None else float(value)
    except (KeyError, TypeError, ValueError):
        raise StoreURLError(f"option {name}={value!r}: expected {type(default).__name__}") from None
    return None if value is None else str(value)


def _apply(cfg: Any, options: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cfg)} - {
        "path",
        "host",
        "port",
        "db",
        "username",
        "password",
        "tls",
    }
    unknown = sorted(set(options) - known)
    if unknown:
        raise StoreURLError(
            f"unknown store option(s) {unknown} for {type(cfg).__name__}; known: {sorted(known)}"
        )
    cfg = replace(cfg, **{k: _coerce(type(cfg), k, v) for k, v in options.items()})
    for name in ("positives_cap", "dislikes_cap", "seen_cap"):
        if getattr(cfg, name) < 1:
            raise StoreURLError(f"option {name} must be >= 1, got {getattr(cfg, name)}")
    return cfg


def parse_url(url: str, **options: Any) -> SQLiteConfig | RedisConfig:
    """Parse a store URL plus keyword overrides into a backend config.

    Raises:
      StoreURLError: unknown scheme, missing path/host, bad port/db, unknown or
        ill-typed option.
    """
    if not isinstance(url, str) or "://" not in url:
        raise StoreURLError(
            f"store URL {url!r}: expected sqlite:///path, redis://host:port/db or rediss://..."
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        rest = url.split("://", 1)[1]
        path_part, _, query = rest.partition("?")
        if not path_part.startswith("/") or len(path_part) < 2:
            raise StoreURLError(
                f"store URL {url!r}: expected sqlite:///relative/path or sqlite:////abs/path"
            )
        path = unquote(path_part[1:])
        if path.endswith("/"):
            raise StoreURLError(f"store URL {url!r}: the path names a directory, expected a file")
        query_opts = dict(parse_qsl(query, keep_blank_values=True))
        return _apply(SQLiteConfig(path=path), {**query_opts, **options})
    if scheme in ("redis", "rediss"):
        parts = urlsplit(url)
        try:
            port = parts.port or 6379
        except ValueError:
            raise StoreURLError(
                f"store URL {url!r}: the port must be a number in 1..65535"
            ) from None
        if not parts.hostname:
            raise StoreURLError(f"store URL {url!r}: missing host")
        db_text = parts.path.lstrip("/") or "0"
        if not db_text.isdigit():
            raise StoreURLError(
                f"store URL {url!r}: the database must be a number, got {db_text!r}"
            )
        cfg = RedisConfig(
            host=parts.hostname,
            port=port,
            db=int(db_text),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=scheme == "rediss",
        )
        query_opts = dict(parse_qsl(parts.query, keep_blank_values=True))
        cfg = _apply(cfg, {**query_opts, **options})
        if not _PREFIX_RE.match(cfg.prefix):
            raise StoreURLError(
                f"option prefix={cfg.prefix!r}: use 1-64 characters of [A-Za-z0-9_.-]"
            )
        if cfg.socket_timeout <= 0 or cfg.retries < 0 or cfg.backoff < 0 or cfg.max_connections < 1:
            raise StoreURLError(
                "options socket_timeout > 0, retries >= 0, backoff >= 0, max_connections >= 1 are required"
            )
        if cfg.cluster and cfg.db != 0:
            raise StoreURLError(
                f"store URL {url!r}: Redis Cluster has only database 0, got {cfg.db}"
            )
        if cfg.ssl_cert_reqs not in ("required", "optional", "none"):
            raise StoreURLError(
                f"option ssl_cert_reqs={cfg.ssl_cert_reqs!r}: expected required, optional or none"
            )
        return cfg
    raise StoreURLError(
        f"store URL {url!r}: unknown scheme {scheme!r}; expected sqlite, redis or rediss"
    )
