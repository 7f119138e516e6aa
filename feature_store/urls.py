"""Store URLs: which backend each scheme names, and opening a store from a URL.

One URL names the backend and its connection settings; keyword options given
to :func:`open_store` override the URL's query parameters. Each backend is
registered here by scheme (:data:`BACKENDS`), with the module that parses its
URLs and the store class it opens:

=================  ==========================================  =====================================
scheme             settings and URL form                       store
=================  ==========================================  =====================================
``sqlite``         :mod:`feature_store.sqlite.config`          :mod:`feature_store.sqlite.store`
``redis``          :mod:`feature_store.redis.config`           :mod:`feature_store.redis.store`,
``rediss`` (TLS)                                               :mod:`feature_store.redis.cluster`
=================  ==========================================  =====================================

Every option, its unit and default is a documented field of
:class:`feature_store.options.CommonOptions`, :class:`SQLiteConfig` or
:class:`RedisConfig`; a value out of range is refused when the URL is parsed
(:class:`feature_store.options.StoreURLError`), not at the first write.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from feature_store.base import OnlineStore
from feature_store.options import StoreURLError
from feature_store.redis import config as redis_config
from feature_store.redis.config import RedisConfig
from feature_store.sqlite import config as sqlite_config
from feature_store.sqlite.config import SQLiteConfig

#: The config of any backend.
StoreConfig = SQLiteConfig | RedisConfig


def _open_sqlite(url: str, config: Any) -> OnlineStore:
    from feature_store.sqlite.store import SQLiteStore

    return SQLiteStore(url, config)


def _open_redis(url: str, config: Any) -> OnlineStore:
    if config.cluster:
        from feature_store.redis.cluster import RedisClusterStore

        return RedisClusterStore(url, config)
    from feature_store.redis.store import RedisStore

    return RedisStore(url, config)


@dataclass(frozen=True)
class Backend:
    """A backend as a URL scheme names it.

    Attributes:
      parse: ``(url, options) -> config``; raises StoreURLError.
      open: ``(url, config) -> store``, configured but not connected (the store
        module is imported only then: a URL can be checked without redis-py).
    """

    parse: Callable[[str, dict[str, Any]], StoreConfig]
    open: Callable[[str, Any], OnlineStore]


_SQLITE = Backend(sqlite_config.parse, _open_sqlite)
_REDIS = Backend(redis_config.parse, _open_redis)
#: URL scheme -> backend.
BACKENDS: dict[str, Backend] = {"sqlite": _SQLITE, "redis": _REDIS, "rediss": _REDIS}


def _backend(url: str) -> Backend:
    if not isinstance(url, str) or "://" not in url:
        raise StoreURLError(
            f"store URL {url!r}: expected sqlite:///path, redis://host:port/db or rediss://..."
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme not in BACKENDS:
        raise StoreURLError(
            f"store URL {url!r}: unknown scheme {scheme!r}; expected sqlite, redis or rediss"
        )
    return BACKENDS[scheme]


def parse_url(url: str, **options: Any) -> StoreConfig:
    """Parse a store URL plus keyword overrides into a backend config.

    Raises:
      StoreURLError: unknown scheme, missing path/host, bad port/db, unknown,
        ill-typed or out-of-range option.
    """
    return _backend(url).parse(url, options)


def open_store(url: str, **options: Any) -> OnlineStore:
    """The store a URL names, configured but not yet connected.

    Call ``await store.open()`` (or use ``async with``). Keyword ``options``
    override the URL's query parameters (see the module docstring).

    Raises:
      StoreURLError: the URL or an option is malformed.
    """
    backend = _backend(url)
    return backend.open(url, backend.parse(url, options))


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
