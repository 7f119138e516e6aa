"""What ``/v1/recommend`` and ``/v1/items/{id}/similar`` do, between HTTP and the batcher.

Merges the stored user state with the request, decides between the model and
the popularity fallback, builds the blocked set (dislikes, ``exclude``, seen
items) and turns rows back into item ids. A store that fails, or does not
answer within ``store_timeout_s``, degrades the answer: the request's own
lists plus the dislikes this process last knew for the user
(:mod:`serving.usercache`), ``"degraded": true``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import numpy as np
from fastapi import HTTPException

from feature_store.base import UserState
from serving.batcher import Arrival
from serving.deps import AppState
from serving.model import LoadedModel
from serving.retrieval import Query, Result
from serving.schemas import RecommendRequest, ScoredItem

log = logging.getLogger(__name__)

#: Seconds a client should wait before retrying a 503 caused by the store.
STORE_RETRY_AFTER_S = 1


async def reopen_store(state: AppState) -> bool:
    """Retry opening a store that was down at start-up; True when it is open now."""
    if state.store is None:
        return False
    if state.store_error is None:
        return True
    try:
        await asyncio.wait_for(state.store.open(), max(1.0, state.settings.store_timeout_s * 4))
    except Exception as exc:  # any failure of the backend: still down, try again later
        state.store_error = f"{type(exc).__name__}: {exc}"
        return False
    log.info("store %s reachable again", state.settings.public()["store_url"])
    state.store_error = None
    return True


@dataclass
class UserRead:
    """A state read: ``state`` is None when ``degraded`` (``error`` says why)."""

    state: UserState | None
    degraded: bool
    error: str | None = None


def _degraded(app: AppState, outcome: str, error: str, elapsed: float) -> UserRead:
    app.metrics.store_read.labels(outcome).observe(elapsed)
    return UserRead(None, True, error)


class StoreReads:
    """Coalesces the user reads of one event-loop turn into one ``get_users`` call.

    Requests that read the store in the same turn of the loop (under load: the
    requests of one burst, which also share a model batch) wait on one store
    round trip, bounded by one ``store_timeout_s`` timer, instead of one each.
    A lone request (concurrency 1) is read at the next turn: no added wait.
    A failed or slow read degrades every request of that read (see :func:`read_user`).
    """

    def __init__(self, app: AppState) -> None:
        self.app = app
        # with_seen -> user id -> the requests waiting for that user
        self._pending: dict[bool, dict[str, list[asyncio.Future[UserRead]]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0
        self.users = 0

    def read(self, user_id: str, with_seen: bool) -> asyncio.Future[UserRead]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[UserRead] = loop.create_future()
        self._pending.setdefault(with_seen, {}).setdefault(user_id, []).append(fut)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for with_seen, waiters in pending.items():
            task = asyncio.create_task(self._read(waiters, with_seen))
            self._tasks.add(task)  # a reference until done (the loop keeps only weak ones)
            task.add_done_callback(self._tasks.discard)

    async def _read(
        self, waiters: dict[str, list[asyncio.Future[UserRead]]], with_seen: bool
    ) -> None:
        try:
            answers = await self._answers(list(waiters), with_seen)
        except BaseException as exc:  # cancelled at shutdown, or a bug: nobody waits forever
            for futs in waiters.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_exception(
                            exc if isinstance(exc, Exception) else RuntimeError(str(exc))
                        )
            raise
        for uid, futs in waiters.items():
            for fut in futs:
                if not fut.done():  # a client that went away
                    fut.set_result(answers[uid])

    async def _answers(self, uids: list[str], with_seen: bool) -> dict[str, UserRead]:
        app = self.app
        store = app.store
        if store is None:
            why = app.store_error or "store not open"
            return {uid: UserRead(None, True, why) for uid in uids}
        self.calls += 1
        self.users += len(uids)
        timeout = app.settings.store_timeout_s
        started = time.perf_counter()
        try:
            # asyncio.timeout, not wait_for: no task of its own per read (Python 3.11's wait_for)
            async with asyncio.timeout(timeout):
                states = await store.get_users(uids, with_seen=with_seen)
            missing = [uid for uid in uids if uid not in states]
            if missing:
                raise RuntimeError(f"store returned no state for {len(missing)} user(s)")
        except TimeoutError:
            elapsed = time.perf_counter() - started
            log.warning(
                "store read for user(s) %s took over %.3fs: degraded answer",
                _names(uids),
                timeout,
            )
            why = f"no answer within {timeout}s"
            return {uid: _degraded(app, "timeout", why, elapsed) for uid in uids}
        except Exception as exc:  # whatever the backend raises (redis, OS, store errors): degrade
            elapsed = time.perf_counter() - started
            log.warning(
                "store read for user(s) %s failed (%s: %s): degraded answer",
                _names(uids),
                type(exc).__name__,
                exc,
            )
            why = type(exc).__name__
            return {uid: _degraded(app, "error", why, elapsed) for uid in uids}
        elapsed = time.perf_counter() - started
        ok = app.metrics.store_read.labels("ok")
        cache = app.dislike_cache
        out = {}
        for uid in uids:
            ok.observe(elapsed)
            state = states[uid]
            cache.learn(uid, (item for item, _ts in state.dislikes), complete=True)
            out[uid] = UserRead(state, False)
        app.metrics.cache_users.set(len(cache))
        return out


def _names(uids: list[str], most: int = 5) -> str:
    shown = ", ".join(repr(u) for u in uids[:most])
    return shown if len(uids) <= most else f"{shown} and {len(uids) - most} more"


def store_reads(app: AppState) -> StoreReads:
    """The app's read coalescer (made on first use, in the serving event loop)."""
    reads = app.extra.get("store_reads")
    if not isinstance(reads, StoreReads):
        reads = StoreReads(app)
        app.extra["store_reads"] = reads
    return reads


async def read_user(app: AppState, user_id: str, with_seen: bool) -> UserRead:
    """The user's stored state, or ``degraded`` when the store fails or is too slow.

    Any exception of the store counts as "store unavailable" (the backend may
    raise its client library's own errors), and a successful read refreshes the
    user's entry in the dislike cache. Reads of the same loop turn share one
    store call (:class:`StoreReads`).
    """
    return await store_reads(app).read(user_id, with_seen)


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _known(index: dict[str, int], *groups: Iterable[str]) -> dict[str, int]:
    """Row of each id of ``groups`` that ``index`` knows, each distinct id looked up once.

    In a large catalogue each lookup in its map misses the CPU cache, and a stored
    user's seen set repeats their positives and dislikes: the rows of one request
    are looked up here, then read from this small map.
    """
    get = index.get
    return {x: r for x in set(chain.from_iterable(groups)) if (r := get(x)) is not None}


def _rows(index: dict[str, int], ids: Iterable[str]) -> list[int]:
    """Rows of the known ``ids``, in their order (unknown ids dropped)."""
    return [r for r in map(index.get, ids) if r is not None]


def _demote_rows(
    app: AppState,
    model: LoadedModel,
    stored: UserState | None,
    asked: list[str],
    dislike_rows: list[int],
    row_of: dict[str, int],
) -> np.ndarray | None:
    """Rows of the dislikes soft demotion reacts to (settings ``demote_dislikes``); None when off.

    ``fresh``: the stored dislikes stamped after the newest event the version was
    trained from, then the request's own (never stored, so never trained on); all
    of the user's dislikes when the version has no times. ``recent``: the user's
    latest ones (``dislike_rows``: stored, then the request's). Either way at most
    ``demote_recent``, the latest. ``row_of``: the request's rows (:func:`_known`).
    """
    settings = app.settings
    if settings.demote_weight <= 0:
        return None
    through = model.trained_through
    if settings.demote_dislikes == "fresh" and through is not None:
        fresh = [item for item, ts in stored.dislikes if ts > through] if stored else []
        dislike_rows = _rows(row_of, [*fresh, *asked])
    return np.asarray(dislike_rows[-settings.demote_recent :], dtype=np.int64)


def _count(app: AppState, result: Result) -> None:
    """A model answer's counters (a counter's update takes a lock: only those that moved)."""
    metrics = app.metrics
    if result.filtered:
        metrics.filtered.inc(result.filtered)
    if result.searches > 1:
        metrics.widened.inc(result.searches - 1)
    if result.demoted:
        metrics.demoted.inc(result.demoted)
    if result.exact:
        metrics.exact.inc()


def popular_fallback(
    model: LoadedModel, blocked: set[int], k: int
) -> tuple[list[int], list[float], int]:
    """Top-k of the manifest's popularity list minus ``blocked``, then the rest of the catalog.

    The manifest keeps only the most popular items (``export.popular_items``);
    once that list is exhausted the answer is topped up in index order, so it
    has exactly ``min(k, catalog - blocked)`` rows.

    Returns:
      (rows, scores, filtered): scores are ``1 / (1 + rank in the popularity
      list)``, 0 for top-up rows; ``filtered`` counts the blocked rows passed
      over before the last returned one.
    """
    rows: list[int] = []
    scores: list[float] = []
    examined: set[int] = set()  # taken or passed over
    filtered = 0
    for rank, row in enumerate(model.popular.tolist()):
        if len(rows) >= k:
            return rows, scores, filtered
        if row in examined:
            continue
        examined.add(row)
        if row in blocked:
            filtered += 1
            continue
        rows.append(row)
        scores.append(1.0 / (1.0 + rank))
    for row in range(model.num_items):
        if len(rows) >= k:
            break
        if row in examined:
            continue
        if row in blocked:
            filtered += 1
            continue
        rows.append(row)
        scores.append(0.0)
    return rows, scores, filtered


async def recommend(
    app: AppState, model: LoadedModel, req: RecommendRequest, k: int
) -> dict[str, Any]:
    """Top-k for one request on ``model`` (the version read once at the start of the request).

    Returns the body of a :class:`~serving.schemas.RecommendResponse` as a plain dict.
    """
    with app.batcher.incoming() as arrival:
        return await _recommend(app, model, req, k, arrival)


async def _recommend(
    app: AppState, model: LoadedModel, req: RecommendRequest, k: int, arrival: Arrival
) -> dict[str, Any]:
    metrics = app.metrics
    stored: UserState | None = None
    degraded = False
    remembered: set[str] = set()
    if req.user_id is not None:
        read = await read_user(app, req.user_id, with_seen=req.exclude_seen)
        stored, degraded = read.state, read.degraded
        cached = app.dislike_cache.get(req.user_id)
        if cached is not None:
            # Merged on every answer, not only degraded ones: the store may also have
            # lost a write it acknowledged (failover), and a union costs little.
            remembered = cached.items
        if degraded:
            known = "complete" if cached and cached.complete else "partial" if cached else "none"
            metrics.degraded_users.labels(known).inc()
            if known != "complete" and app.settings.degraded_unknown_users == "refuse":
                raise HTTPException(
                    503,
                    f"online store unavailable ({read.error}) and this server has no stored "
                    f"dislikes of user {req.user_id!r} to filter with; retry later",
                    headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
                )

    history = (stored.positives if stored else []) + list(req.history)
    dislikes = ([item for item, _ts in stored.dislikes] if stored else []) + list(req.dislikes)
    seen = stored.seen if req.exclude_seen and stored is not None and stored.seen else ()
    row_of = _known(model.id_to_index, history, dislikes, req.exclude, remembered, seen)
    ignored = _unique([x for x in (*req.history, *req.dislikes, *req.exclude) if x not in row_of])
    history_rows = _rows(row_of, history)
    dislike_rows = _rows(row_of, dislikes)
    if req.exclude_seen:  # every id looked up is blocked
        blocked = set(row_of.values())
    else:
        blocked = {*dislike_rows, *_rows(row_of, req.exclude), *_rows(row_of, remembered)}

    fallback: Literal["popular"] | None = None
    if not history_rows:
        fallback = "popular"
        metrics.fallbacks.labels("popular").inc()
        arrival.landed()  # no query for the batcher
        rows, scores, filtered = popular_fallback(model, blocked, k)
        if filtered:
            metrics.filtered.inc(filtered)
    else:
        query = Query(
            model=model,
            k=k,
            blocked=blocked,
            history=model.row_tokens(history_rows, model.history_length),
            dislikes=model.row_tokens(dislike_rows, model.dislike_length),
            demote_rows=_demote_rows(app, model, stored, req.dislikes, dislike_rows, row_of),
        )
        result = await app.batcher.submit(query, arrival)
        rows, scores = result.rows.tolist(), result.scores.tolist()
        _count(app, result)
    if degraded:
        metrics.degraded.labels("/v1/recommend").inc()
    if ignored:
        metrics.ignored_items.inc(len(ignored))
    ids = model.id_list
    # A plain dict in the response schema's field order, encoded once by the route
    # (RecommendResponse documents it; building 20 models per answer costs more).
    return {
        "user_id": req.user_id,
        "items": [{"item_id": ids[r], "score": s} for r, s in zip(rows, scores, strict=True)],
        "model_version": model.version,
        "fallback": fallback,
        "degraded": degraded,
        "ignored_items": ignored,
    }


async def similar(app: AppState, model: LoadedModel, row: int, k: int) -> list[ScoredItem]:
    """The ``k`` items nearest to item ``row`` (itself excluded), by inner product."""
    query = Query(model=model, k=k, blocked={row}, vector=model.embeddings[row])
    result = await app.batcher.submit(query)
    ids = model.id_list
    return [
        ScoredItem(item_id=ids[r], score=s)
        for r, s in zip(result.rows.tolist(), result.scores.tolist(), strict=True)
    ]
