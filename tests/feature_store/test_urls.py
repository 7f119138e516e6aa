"""Store URL parsing: every accepted form, and a clear StoreURLError for the rest."""

from __future__ import annotations

import pytest

from feature_store import open_store
from feature_store.options import StoreURLError
from feature_store.redis.config import RedisConfig
from feature_store.redis.store import RedisStore
from feature_store.sqlite.config import SQLiteConfig
from feature_store.sqlite.store import SQLiteStore
from feature_store.urls import parse_url


def test_sqlite_relative_and_absolute_paths() -> None:
    assert parse_url("sqlite:///data/store.sqlite") == SQLiteConfig(path="data/store.sqlite")
    cfg = parse_url("sqlite:////var/lib/tt.sqlite?busy_timeout=2.5&positives_cap=50")
    assert cfg == SQLiteConfig(path="/var/lib/tt.sqlite", busy_timeout=2.5, positives_cap=50)
    assert isinstance(open_store("sqlite:///x.sqlite"), SQLiteStore)


def test_redis_url_with_auth_db_timeouts_pool_and_prefix() -> None:
    cfg = parse_url(
        "redis://:s%40cret@cache.internal:6380/3?socket_timeout=0.25&max_connections=8&prefix=prod&state_ttl=3600"
    )
    assert isinstance(cfg, RedisConfig)
    assert (cfg.host, cfg.port, cfg.db, cfg.password, cfg.tls) == (
        "cache.internal",
        6380,
        3,
        "s@cret",
        False,
    )
    assert (cfg.socket_timeout, cfg.max_connections, cfg.prefix, cfg.state_ttl) == (
        0.25,
        8,
        "prod",
        3600,
    )
    assert "s@cret" not in cfg.redacted() and "***" in cfg.redacted()
    tls = parse_url("rediss://svc:pw@h/0?ssl_cert_reqs=none")
    assert isinstance(tls, RedisConfig) and tls.tls and tls.username == "svc" and tls.port == 6379
    assert isinstance(open_store("redis://127.0.0.1:6379/0"), RedisStore)


def test_keyword_options_override_the_query() -> None:
    cfg = parse_url("redis://h:1/0?retries=5", retries=0, dislikes_cap=7)
    assert isinstance(cfg, RedisConfig) and (cfg.retries, cfg.dislikes_cap) == (0, 7)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://h/db", "unknown scheme 'mysql'"),
        ("store.sqlite", "expected sqlite:///path"),
        ("sqlite://", "expected sqlite:///relative/path"),
        ("sqlite:///", "expected sqlite:///relative/path"),
        ("sqlite:///dir/", "names a directory"),
        ("redis://h:notaport/0", "port must be a number"),
        ("redis://h:6379/abc", "database must be a number"),
        ("redis:///0", "missing host"),
        ("redis://h/0?colour=blue", r"unknown store option\(s\) \['colour'\]"),
        ("redis://h/0?socket_timeout=soon", "socket_timeout='soon': expected float"),
        ("redis://h/0?prefix=a{b}", "prefix="),
        ("redis://h/0?socket_timeout=0", "socket_timeout > 0"),
        ("sqlite:///x.sqlite?positives_cap=0", "positives_cap must be >= 1"),
        ("sqlite:///x.sqlite?prefix=p", "unknown store option"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis://h/3?cluster=true", "Redis Cluster has only database 0"),
        ("redis://h/0?cluster=perhaps", "cluster='perhaps': expected bool"),
        ("redis://h/0?idempotency_ttl=-1", "idempotency_ttl must be 0 .remember forever"),
        ("sqlite:///x.sqlite?idempotency_ttl=1.5", "idempotency_ttl='1.5': expected int"),
        ("redis://h/0?log_retention=-2", "log_retention must be >= 0 seconds or -1"),
        ("sqlite:///x.sqlite?dislikes_keep=0", "dislikes_keep must be >= 1"),
        ("sqlite:///x.sqlite?busy_timeout=0", "busy_timeout must be > 0"),
        ("redis://h/0?state_ttl=-5", "state_ttl and health_check_interval must be >= 0"),
        ("redis://h/0?health_check_interval=-1", "health_check_interval must be >= 0"),
        ("redis://h/0?connect_timeout=0", "connect_timeout > 0"),
        ("redis://h/0?ssl_ca_certs=/ca.pem", r"\['ssl_ca_certs'\] need TLS: use a rediss:// URL"),
        (
            "rediss://h/0?ssl_cert_reqs=none&ssl_check_hostname=true",
            "ssl_check_hostname=true needs",
        ),
        ("rediss://h/0?ssl_keyfile=/k.pem", "ssl_keyfile needs ssl_certfile"),
        ("rediss://h/0?ssl_check_hostname=maybe", "ssl_check_hostname='maybe': expected bool"),
        ("redis://h/0?socket_keepalive=2", "socket_keepalive='2': expected bool"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(StoreURLError, match=message):
        open_store(url)


def test_store_url_error_is_a_value_error_for_the_cli() -> None:
    assert issubclass(StoreURLError, ValueError)


def test_tls_health_check_and_keepalive_options() -> None:
    cfg = parse_url(
        "rediss://svc:pw@cache:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/etc/c.pem"
        "&ssl_keyfile=/etc/k.pem&health_check_interval=30&socket_keepalive=no"
    )
    assert isinstance(cfg, RedisConfig)
    assert (cfg.ssl_ca_certs, cfg.ssl_certfile, cfg.ssl_keyfile) == (
        "/etc/ca.pem",
        "/etc/c.pem",
        "/etc/k.pem",
    )
    assert cfg.check_hostname and cfg.health_check_interval == 30 and not cfg.socket_keepalive
    relaxed = parse_url("rediss://h/0?ssl_cert_reqs=optional&ssl_check_hostname=false")
    assert isinstance(relaxed, RedisConfig) and not relaxed.check_hostname
    none = parse_url("rediss://h/0?ssl_cert_reqs=none")
    assert isinstance(none, RedisConfig) and not none.check_hostname


def test_idempotency_and_retention_defaults_are_the_safe_ones() -> None:
    for url in ("sqlite:///x.sqlite", "redis://h/0"):
        cfg = parse_url(url)
        assert cfg.idempotency_ttl == 0  # remember forever
        assert cfg.log_retention == 7 * 86400  # a week after every exporter has it
        assert cfg.dislikes_keep >= 1_000_000 and cfg.dislikes_cap >= 1_000_000
    assert parse_url("redis://h/0?idempotency_ttl=0&log_retention=-1").log_retention == -1
