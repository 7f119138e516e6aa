"""``sqlite:///path``: the embedded store's settings and its URL form.

Accepted forms::

    sqlite:///relative/path.sqlite          (three slashes: path relative to the cwd)
    sqlite:////absolute/path.sqlite         (four slashes: absolute path)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote

from feature_store.options import CommonOptions, StoreURLError, apply_options, check


@dataclass(frozen=True, slots=True)
class SQLiteConfig(CommonOptions):
    """``sqlite:///path``: the embedded store (one file, WAL mode).

    Attributes:
      path: the database file (created with its directory).
      busy_timeout: seconds a write waits for another process's write lock before
        failing with StoreUnavailable (nothing applied) (10.0).
    """

    URL_FIELDS: ClassVar[frozenset[str]] = frozenset({"path"})

    path: str = ""
    busy_timeout: float = 10.0


def parse(url: str, options: dict[str, Any]) -> SQLiteConfig:
    """The config of a ``sqlite://`` URL, ``options`` overriding its query parameters.

    Raises:
      StoreURLError: no path, a directory path, or an unknown, ill-typed or out-of-range option.
    """
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
    cfg = apply_options(SQLiteConfig(path=path), {**query_opts, **options})
    check(cfg.busy_timeout > 0, f"option busy_timeout must be > 0 seconds, got {cfg.busy_timeout}")
    return cfg
