"""Redis plumbing shared by the standalone and Cluster stores: clients, errors, retries.

Error mapping: every exception redis-py (or the socket layer) raises is turned
into the store's hierarchy:

* failover and connectivity (connection/timeout/socket errors, ``LOADING``,
  ``TRYAGAIN``, ``CLUSTERDOWN``, ``MASTERDOWN``, ``READONLY``, ``BUSY``,
  cluster topology errors, protocol desync) are *transient*: retried with
  bounded exponential backoff with jitter, then :class:`StoreUnavailable`;
* ``OOM`` (the server refuses writes until memory is freed) is
  :class:`StoreUnavailable` at once;
* everything else (authentication, permissions, ``WRONGTYPE``, a redirection
  that means the URL lacks ``cluster=true``, bad data) is :class:`StoreError`
  with what to fix.

Retrying is safe because every write is idempotent (see
:mod:`feature_store.redis.scripts`); the scripts are written so a failed one
has written nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from feature_store.base import StoreError, StoreOutcomeUnknown, StoreUnavailable
from feature_store.redis.config import RedisConfig

T = TypeVar("T")
#: Longest pause between two attempts, seconds.
MAX_BACKOFF_S = 1.0

_TRANSIENT: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,  # incl. BusyLoadingError (LOADING), MaxConnectionsError
    rexc.TimeoutError,
    asyncio.TimeoutError,
    OSError,
    rexc.ClusterError,  # incl. ClusterDownError, MasterDownError
    rexc.TryAgainError,
    rexc.ReadOnlyError,  # a failover demoted the node we talk to
    rexc.RedisClusterException,  # incl. SlotNotCoveredError: the topology is changing
    rexc.InvalidResponse,  # protocol desync; the connection is dropped
)
_CONFIG = (rexc.AuthenticationError, rexc.AuthorizationError, rexc.NoPermissionError)


def ssl_kwargs(cfg: RedisConfig) -> dict[str, Any]:
    """redis-py TLS keyword arguments of a ``rediss://`` config."""
    return {
        "ssl_cert_reqs": cfg.ssl_cert_reqs,
        "ssl_ca_certs": cfg.ssl_ca_certs,
        "ssl_certfile": cfg.ssl_certfile,
        "ssl_keyfile": cfg.ssl_keyfile,
        "ssl_check_hostname": cfg.check_hostname,
    }


def no_retry() -> Retry:
    """redis-py's own retry, off: retries are ours (bounded, with backoff, counted)."""
    return Retry(NoBackoff(), 0)


def make_client(cfg: RedisConfig) -> aioredis.Redis:
    """A standalone client with a blocking pool bounded by ``max_connections``."""
    kwargs: dict[str, Any] = {
        "host": cfg.host,
        "port": cfg.port,
        "db": cfg.db,
        "username": cfg.username,
        "password": cfg.password,
        "socket_timeout": cfg.socket_timeout,
        "socket_connect_timeout": cfg.connect_timeout or cfg.socket_timeout,
        "socket_keepalive": cfg.socket_keepalive,
        "health_check_interval": cfg.health_check_interval,
        "max_connections": cfg.max_connections,
        "timeout": cfg.socket_timeout,  # wait for a free pooled connection at most this long
        "decode_responses": True,
        "retry": no_retry(),
    }
    if cfg.tls:
        kwargs["connection_class"] = aioredis.SSLConnection
        kwargs.update(ssl_kwargs(cfg))
    pool = aioredis.BlockingConnectionPool(**kwargs)
    return aioredis.Redis(connection_pool=pool)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _CONFIG):
        return False
    if isinstance(exc, _TRANSIENT):
        return True
    text = str(exc)
    return isinstance(exc, rexc.ResponseError) and (text.startswith("BUSY ") or "('BUSY " in text)


def fatal_error(where: str, what: str, exc: BaseException) -> StoreError:
    """The store error for a non-transient failure, saying what to do about it."""
    if isinstance(exc, rexc.OutOfMemoryError):
        return StoreUnavailable(
            f"{where}: {what} refused, Redis is out of memory (maxmemory): {exc}; "
            "nothing was written; free memory or raise maxmemory"
        )
    if isinstance(exc, _CONFIG):
        return StoreError(f"{where}: {what}: authentication/permission refused: {exc}")
    if isinstance(exc, (rexc.MovedError, rexc.AskError)):
        return StoreError(
            f"{where}: {what}: the server is a Redis Cluster node ({exc}); add ?cluster=true"
        )
    return StoreError(f"{where}: {what} failed: {type(exc).__name__}: {exc}")


@dataclass
class Attempts:
    """What an operation's attempts did: ``sent`` once a write may have reached Redis."""

    sent: bool = False


async def retrying(
    cfg: RedisConfig,
    what: str,
    fn: Callable[[Attempts], Awaitable[T]],
    *,
    size: int = 1,
    trips: int = 1,
    write: bool = False,
) -> T:
    """Run ``fn`` up to ``1 + retries`` times, each attempt bounded in time.

    An attempt may take ``socket_timeout * trips * (1 + size / 1000)`` seconds
    (``trips`` round trips of a ``size``-item batch); between attempts the
    delay is ``backoff * 2**attempt`` (capped at 1 s) times a random factor in
    [0.5, 1]. So a call never takes longer than about ``(1 + retries) *
    attempt timeout + retries * 1 s``.

    Raises:
      StoreOutcomeUnknown: ``write`` and an attempt set ``attempts.sent`` before failing.
      StoreUnavailable: transient failures on every attempt (nothing sent, for a write).
      StoreError: a non-transient failure (see the module docstring).
    """
    where = cfg.redacted()
    attempt_timeout = cfg.socket_timeout * trips * (1 + size / 1000)
    attempts = Attempts()
    last: BaseException | None = None
    for attempt in range(cfg.retries + 1):
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for runs the attempt as
            # a task of its own, two more event-loop turns on every store call.
            async with asyncio.timeout(attempt_timeout):
                return await fn(attempts)
        except (rexc.RedisError, rexc.RedisClusterException, OSError) as exc:
            if not is_transient(exc):
                raise fatal_error(where, what, exc) from exc
            last = exc
        if attempt < cfg.retries:
            delay = min(cfg.backoff * 2**attempt, MAX_BACKOFF_S)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
    reason = f"{type(last).__name__}: {last or f'no reply within {attempt_timeout:.2f}s'}"
    if write and attempts.sent:
        raise StoreOutcomeUnknown(
            f"{where}: {what}: no reply after {cfg.retries + 1} attempts ({reason}); "
            "some events may have been applied: retry with the same event ids"
        )
    raise StoreUnavailable(f"{where}: {what} failed after {cfg.retries + 1} attempts: {reason}")
