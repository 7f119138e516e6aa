"""Store URLs and per-backend configuration.

One URL names the backend and its connection settings; keyword options given
to :func:`feature_store.open_store` override the URL's query parameters.

Accepted forms::

    sqlite:///relative/path.sqlite          (three slashes: path relative to the cwd)
    sqlite:////absolute/path.sqlite         (four slashes: absolute path)
    redis://[:password@]host:port/db?socket_timeout=0.5&max_connections=32&prefix=tt
    rediss://[user:password@]host:port/db?ssl_ca_certs=/etc/ca.pem&...   (TLS)

Every option, its unit and default is a documented field of
:class:`CommonOptions`, :class:`SQLiteConfig` or :class:`RedisConfig`;
a value out of range is refused here (:class:`StoreURLError`), not at the
first write.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from common.urls import MASK

#: ``log_retention`` value that keeps every log entry forever.
KEEP_FOREVER = -1.0


class StoreURLError(ValueError):
    """A store URL or option is malformed; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class CommonOptions:
    """Options shared by every backend.

    Read caps (what one read returns; per process, change them freely):

    Attributes:
      positives_cap: most recent positives returned per user (200).
      dislikes_cap: most recent distinct disliked items returned per user
        (1,000,000: all of them, since serving filters every returned dislike).
      seen_cap: most recent distinct interacted items returned per user (1000).

    Storage caps (what the store keeps per user). They are a property of the
    store, recorded when it is created; a process opening an existing store
    uses the recorded values whatever it was given, so a process configured
    differently can never trim what others wrote:

    Attributes:
      positives_keep: positives kept per user (1000), oldest by ts dropped first.
      seen_keep: distinct interacted items kept per user (2000).
      dislikes_keep: distinct disliked items kept per user (1,000,000). Dislikes
        never expire; this bound only stops an abusive client from growing one
        user without limit, knowing that its oldest dislikes then stop being filtered.

    Log and idempotency:

    Attributes:
      idempotency_ttl: seconds an accepted ``(user_id, event_id)`` is remembered.
        0 (the default) = forever: a resend is a duplicate however late it comes.
        A positive value is an explicit opt-in that *weakens* the no-double-count
        guarantee to that window (see :class:`feature_store.base.OnlineStore`).
      log_retention: seconds an exported log entry is kept after every exporter
        committed past it (7 days); 0 trims right after the export commits,
        -1 never trims. Entries not yet exported by every exporter are never trimmed.
    """

    positives_cap: int = 200
    dislikes_cap: int = 1_000_000
    seen_cap: int = 1000
    positives_keep: int = 1000
    seen_keep: int = 2000
    dislikes_keep: int = 1_000_000
    idempotency_ttl: int = 0
    log_retention: float = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class SQLiteConfig(CommonOptions):
    """``sqlite:///path``: the embedded store (one file, WAL mode).

    Attributes:
      path: the database file (created with its directory).
      busy_timeout: seconds a write waits for another process's write lock before
        failing with StoreUnavailable (nothing applied) (10.0).
    """

    path: str = ""
    busy_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class RedisConfig(CommonOptions):
    """``redis://`` / ``rediss://``: the production store.

    Attributes:
      socket_timeout: seconds one round trip may take (1.0); an attempt's bound
        grows with the batch size (see :mod:`feature_store.redis`).
      connect_timeout: seconds to connect (default: socket_timeout).
      retries: retries after the first attempt (3), with backoff.
      backoff: base retry delay in seconds (0.05), doubled per retry, capped at 1 s.
      max_connections: pool size (32).
      prefix: key prefix, ``[A-Za-z0-9_.-]{1,64}`` ("tt").
      state_ttl: seconds of inactivity after which a user's positives and seen
        set expire; 0 = never (the default). Dislikes and the idempotency
        record never follow it.
      cluster: the URL names one node of a Redis Cluster.
      health_check_interval: seconds a pooled connection may sit idle before it
        is PINGed on reuse (0 = never, the default; set ~30 behind a proxy or
        load balancer that drops idle connections).
      socket_keepalive: TCP keepalive on every connection (true).
      ssl_cert_reqs: rediss: server certificate check, ``required``/``optional``/``none``.
      ssl_ca_certs: rediss: CA bundle (PEM) to verify the server with (default: system CAs).
      ssl_certfile / ssl_keyfile: rediss: client certificate and key (PEM) for mutual TLS.
      ssl_check_hostname: rediss: the server certificate must name the host
        (default: true when ``ssl_cert_reqs=required``).
    """

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    socket_timeout: float = 1.0
    connect_timeout: float | None = None
    retries: int = 3
    backoff: float = 0.05
    max_connections: int = 32
    prefix: str = "tt"
    state_ttl: int = 0
    cluster: bool = False
    health_check_interval: int = 0
    socket_keepalive: bool = True
    ssl_cert_reqs: str = "required"
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool | None = None

    @property
    def check_hostname(self) -> bool:
        """Whether TLS checks the server's host name (explicit, else only with required certs)."""
        if self.ssl_check_hostname is not None:
            return self.ssl_check_hostname
        return self.ssl_cert_reqs == "required"

    def redacted(self) -> str:
        """The URL without the password, for logs and reports."""
        scheme = "rediss" if self.tls else "redis"
        auth = f"{self.username or ''}:{MASK}@" if self.password else ""
        return f"{scheme}://{auth}{self.host}:{self.port}/{self.db}?prefix={self.prefix}"


_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_FIXED = {"path", "host", "port", "db", "username", "password", "tls"}
_OPTIONAL_FLOAT = {"connect_timeout"}
_OPTIONAL_STR = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}
_OPTIONAL_BOOL = {"ssl_check_hostname"}
_TLS_ONLY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return _BOOLS[str(value).lower()]


def _to_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _converter(cfg_type: type, name: str) -> tuple[Callable[[Any], Any], str]:
    if name in _OPTIONAL_FLOAT:
        return float, "float"
    if name in _OPTIONAL_STR:
        return str, "str"
    if name in _OPTIONAL_BOOL:
        return _to_bool, "bool"
    default = {f.name: f for f in fields(cfg_type)}[name].default
    if isinstance(default, bool):
        return _to_bool, "bool"
    if isinstance(default, int):
        return _to_int, "int"
    if isinstance(default, float):
        return float, "float"
    return str, "str"


def _coerce(cfg_type: type, name: str, value: Any) -> Any:
    """Convert a query-string value to the field's type, or raise StoreURLError."""
    if value is None and name in _OPTIONAL_FLOAT | _OPTIONAL_STR | _OPTIONAL_BOOL:
        return None
    convert, type_name = _converter(cfg_type, name)
    try:
        return convert(value)
    except (KeyError, TypeError, ValueError):
        raise StoreURLError(f"option {name}={value!r}: expected {type_name}") from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise StoreURLError(message)


def _apply(cfg: Any, options: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cfg)} - _FIXED
    unknown = sorted(set(options) - known)
    if unknown:
        raise StoreURLError(
            f"unknown store option(s) {unknown} for {type(cfg).__name__}; known: {sorted(known)}"
        )
    cfg = replace(cfg, **{k: _coerce(type(cfg), k, v) for k, v in options.items()})
    for name in (
        "positives_cap",
        "dislikes_cap",
        "seen_cap",
        "positives_keep",
        "seen_keep",
        "dislikes_keep",
    ):
        _check(getattr(cfg, name) >= 1, f"option {name} must be >= 1, got {getattr(cfg, name)}")
    _check(
        cfg.idempotency_ttl >= 0,
        f"option idempotency_ttl must be 0 (remember forever, the default) or a positive number "
        f"of seconds, got {cfg.idempotency_ttl}",
    )
    _check(
        cfg.log_retention >= 0 or cfg.log_retention == KEEP_FOREVER,
        f"option log_retention must be >= 0 seconds or -1 (never trim), got {cfg.log_retention}",
    )
    return cfg


def _parse_sqlite(url: str, options: dict[str, Any]) -> SQLiteConfig:
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
    cfg: SQLiteConfig = _apply(SQLiteConfig(path=path), {**query_opts, **options})
    _check(cfg.busy_timeout > 0, f"option busy_timeout must be > 0 seconds, got {cfg.busy_timeout}")
    return cfg


def _parse_redis(url: str, scheme: str, options: dict[str, Any]) -> RedisConfig:
    parts = urlsplit(url)
    try:
        port = parts.port or 6379
    except ValueError:
        raise StoreURLError(f"store URL {url!r}: the port must be a number in 1..65535") from None
    if not parts.hostname:
        raise StoreURLError(f"store URL {url!r}: missing host")
    db_text = parts.path.lstrip("/") or "0"
    if not db_text.isdigit():
        raise StoreURLError(f"store URL {url!r}: the database must be a number, got {db_text!r}")
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
    _check(
        bool(_PREFIX_RE.match(cfg.prefix)),
        f"option prefix={cfg.prefix!r}: use 1-64 characters of [A-Za-z0-9_.-]",
    )
    _check(
        cfg.socket_timeout > 0
        and cfg.retries >= 0
        and cfg.backoff >= 0
        and cfg.max_connections >= 1
        and (cfg.connect_timeout is None or cfg.connect_timeout > 0),
        "options socket_timeout > 0, connect_timeout > 0, retries >= 0, backoff >= 0, "
        "max_connections >= 1 are required",
    )
    _check(
        cfg.state_ttl >= 0 and cfg.health_check_interval >= 0,
        "options state_ttl and health_check_interval must be >= 0 seconds (0 = off)",
    )
    _check(
        not (cfg.cluster and cfg.db != 0),
        f"store URL {url!r}: Redis Cluster has only database 0, got {cfg.db}",
    )
    _check(
        cfg.ssl_cert_reqs in ("required", "optional", "none"),
        f"option ssl_cert_reqs={cfg.ssl_cert_reqs!r}: expected required, optional or none",
    )
    if not cfg.tls:
        given = [name for name in _TLS_ONLY if getattr(cfg, name) is not None]
        _check(not given, f"option(s) {given} need TLS: use a rediss:// URL")
    _check(
        not (cfg.ssl_check_hostname and cfg.ssl_cert_reqs == "none"),
        "option ssl_check_hostname=true needs ssl_cert_reqs=required or optional "
        "(a certificate that is not checked has no host name to match)",
    )
    _check(
        not (cfg.ssl_keyfile and not cfg.ssl_certfile),
        "option ssl_keyfile needs ssl_certfile (the client certificate it belongs to)",
    )
    return cfg


def parse_url(url: str, **options: Any) -> SQLiteConfig | RedisConfig:
    """Parse a store URL plus keyword overrides into a backend config.

    Raises:
      StoreURLError: unknown scheme, missing path/host, bad port/db, unknown,
        ill-typed or out-of-range option.
    """
    if not isinstance(url, str) or "://" not in url:
        raise StoreURLError(
            f"store URL {url!r}: expected sqlite:///path, redis://host:port/db or rediss://..."
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        return _parse_sqlite(url, options)
    if scheme in ("redis", "rediss"):
        return _parse_redis(url, scheme, options)
    raise StoreURLError(
        f"store URL {url!r}: unknown scheme {scheme!r}; expected sqlite, redis or rediss"
    )


def missing_sqlite_file(url: str) -> str | None:
    """The file of a ``sqlite:///`` store that does not exist yet, else None.

    For readers of an existing store (an ``events:`` source, ``twotower pipeline``,
    ``twotower forget``): opening a missing file would create an empty store and
    report nothing to do, when the path (or the working directory) is the mistake.

    Raises:
      StoreURLError: the URL is malformed.
    """
    cfg = parse_url(url)
    if isinstance(cfg, SQLiteConfig) and not os.path.isfile(cfg.path):
        return cfg.path
    return None
