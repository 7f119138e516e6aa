"""Store options shared by every backend, and how a URL's options are checked.

A backend's config (:class:`feature_store.sqlite.config.SQLiteConfig`,
:class:`feature_store.redis.config.RedisConfig`) extends :class:`CommonOptions`
with its own documented fields; :func:`apply_options` turns query-string and
keyword values into such a config, refusing an unknown, ill-typed or
out-of-range one with :class:`StoreURLError` (here, not at the first write).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, dataclass, fields, replace
from typing import Any, ClassVar, TypeVar

#: ``log_retention`` value that keeps every log entry forever.
KEEP_FOREVER = -1.0

C = TypeVar("C", bound="CommonOptions")


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

    #: Fields taken from the URL itself (path, host...), not settable as options.
    URL_FIELDS: ClassVar[frozenset[str]] = frozenset()

    positives_cap: int = 200
    dislikes_cap: int = 1_000_000
    seen_cap: int = 1000
    positives_keep: int = 1000
    seen_keep: int = 2000
    dislikes_keep: int = 1_000_000
    idempotency_ttl: int = 0
    log_retention: float = 7 * 86400.0


_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return _BOOLS[str(value).lower()]


def _to_int(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "bool": _to_bool,
    "int": _to_int,
    "float": float,
    "str": str,
}


def _annotation(f: Field[Any]) -> tuple[str, bool]:
    """A field's base type name (bool, int, float or str) and whether it may be None."""
    text = f.type.__name__ if isinstance(f.type, type) else str(f.type)
    parts = [p.strip() for p in text.split("|")]
    base = [p for p in parts if p != "None"]
    return base[0], len(base) < len(parts)


def _coerce(f: Field[Any], value: Any) -> Any:
    """Convert a query-string value to the field's type, or raise StoreURLError."""
    type_name, optional = _annotation(f)
    if value is None and optional:
        return None
    try:
        return _CONVERTERS[type_name](value)
    except (KeyError, TypeError, ValueError):
        raise StoreURLError(f"option {f.name}={value!r}: expected {type_name}") from None


def check(ok: bool, message: str) -> None:
    """Raise :class:`StoreURLError` with ``message`` unless ``ok``."""
    if not ok:
        raise StoreURLError(message)


def apply_options(cfg: C, options: dict[str, Any]) -> C:
    """``cfg`` with ``options`` (query-string or keyword values) applied and the common ones checked.

    Raises:
      StoreURLError: an unknown option, an ill-typed value or a common option out of range.
    """
    settable = {f.name: f for f in fields(cfg) if f.name not in cfg.URL_FIELDS}
    unknown = sorted(set(options) - set(settable))
    if unknown:
        raise StoreURLError(
            f"unknown store option(s) {unknown} for {type(cfg).__name__}; known: {sorted(settable)}"
        )
    cfg = replace(cfg, **{k: _coerce(settable[k], v) for k, v in options.items()})
    for name in (
        "positives_cap",
        "dislikes_cap",
        "seen_cap",
        "positives_keep",
        "seen_keep",
        "dislikes_keep",
    ):
        check(getattr(cfg, name) >= 1, f"option {name} must be >= 1, got {getattr(cfg, name)}")
    check(
        cfg.idempotency_ttl >= 0,
        f"option idempotency_ttl must be 0 (remember forever, the default) or a positive number "
        f"of seconds, got {cfg.idempotency_ttl}",
    )
    check(
        cfg.log_retention >= 0 or cfg.log_retention == KEEP_FOREVER,
        f"option log_retention must be >= 0 seconds or -1 (never trim), got {cfg.log_retention}",
    )
    return cfg
