"""``redis://`` / ``rediss://``: the Redis stores' settings and their URL form.

Accepted forms::

    redis://[:password@]host:port/db?socket_timeout=0.5&max_connections=32&prefix=tt
    rediss://[user:password@]host:port/db?ssl_ca_certs=/etc/ca.pem&...   (TLS)
    redis://node:port/0?cluster=true                                     (Redis Cluster)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

from common.urls import MASK
from feature_store.options import CommonOptions, StoreURLError, apply_options, check

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_TLS_ONLY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")


@dataclass(frozen=True, slots=True)
class RedisConfig(CommonOptions):
    """``redis://`` / ``rediss://``: the production store.

    Attributes:
      socket_timeout: seconds one round trip may take (1.0); an attempt's bound
        grows with the batch size (see :mod:`feature_store.redis.conn`).
      connect_timeout: seconds to connect (default: socket_timeout).
      retries: retries after the first attempt (3), with backoff.
      backoff: base retry delay in seconds (0.05), doubled per retry, capped at 1 s.
      max_connections: pool size (32).
      prefix: key prefix, ``[A-Za-z0-9_.-]{1,64}`` ("tt").
      state_ttl: seconds of inactivity after which a user's positives and seen
        set expire; 0 = never (the default). Dislikes and the idempotency
        record never follow it.
      cluster: the URL names one node of a Redis Cluster.
      read_script: read users' state with a Lua script per few users (true, the
        default: less client CPU, about twice the Redis CPU of the commands);
        false: a pipeline of LRANGE / ZRANGE commands. A cluster always uses the commands.
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

    URL_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"host", "port", "db", "username", "password", "tls"}
    )

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
    read_script: bool = True
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


def parse(url: str, options: dict[str, Any]) -> RedisConfig:
    """The config of a ``redis://`` or ``rediss://`` URL, ``options`` overriding its query.

    Raises:
      StoreURLError: a missing host, a bad port or database, or an unknown, ill-typed,
        out-of-range or inconsistent option.
    """
    scheme = url.split("://", 1)[0].lower()
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
    cfg = apply_options(cfg, {**query_opts, **options})
    check(
        bool(_PREFIX_RE.match(cfg.prefix)),
        f"option prefix={cfg.prefix!r}: use 1-64 characters of [A-Za-z0-9_.-]",
    )
    check(
        cfg.socket_timeout > 0
        and cfg.retries >= 0
        and cfg.backoff >= 0
        and cfg.max_connections >= 1
        and (cfg.connect_timeout is None or cfg.connect_timeout > 0),
        "options socket_timeout > 0, connect_timeout > 0, retries >= 0, backoff >= 0, "
        "max_connections >= 1 are required",
    )
    check(
        cfg.state_ttl >= 0 and cfg.health_check_interval >= 0,
        "options state_ttl and health_check_interval must be >= 0 seconds (0 = off)",
    )
    check(
        not (cfg.cluster and cfg.db != 0),
        f"store URL {url!r}: Redis Cluster has only database 0, got {cfg.db}",
    )
    check(
        cfg.ssl_cert_reqs in ("required", "optional", "none"),
        f"option ssl_cert_reqs={cfg.ssl_cert_reqs!r}: expected required, optional or none",
    )
    if not cfg.tls:
        given = [name for name in _TLS_ONLY if getattr(cfg, name) is not None]
        check(not given, f"option(s) {given} need TLS: use a rediss:// URL")
    check(
        not (cfg.ssl_check_hostname and cfg.ssl_cert_reqs == "none"),
        "option ssl_check_hostname=true needs ssl_cert_reqs=required or optional "
        "(a certificate that is not checked has no host name to match)",
    )
    check(
        not (cfg.ssl_keyfile and not cfg.ssl_certfile),
        "option ssl_keyfile needs ssl_certfile (the client certificate it belongs to)",
    )
    return cfg
