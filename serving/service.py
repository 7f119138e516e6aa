"""What ``/v1/recommend`` and ``/v1/items/{id}/similar`` do, between HTTP and the batcher.

Merges the stored user state with the request, decides between the model and
the popularity fallback, builds the blocked set (dislikes, ``exclude``, seen
items) and turns rows back into item ids. A store that does not answer within
``store_timeout_s`` degrades the answer to the request's own lists.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from feature_store.base import StoreError, UserState
from serving.batcher import Arrival
from serving.deps import AppState
from serving.model import LoadedModel
from serving.retrieval import Query
from serving.schemas import RecommendRequest, RecommendResponse, ScoredItem

log = logging.getLogger(__name__)


async def reopen_store(state: AppState) -> bool:
    """Retry opening a store that was down at start-up; True when it is open now."""
    if state.store is None:
        return False
    if state.store_error is None:
        return True
    try:
        await asyncio.wait_for(state.store.open(), max(1.0, state.settings.store_timeout_s * 4))
    except Exception as exc:
        state.store_error = f"{type(exc).__name__}: {exc}"
        return False
    log.info("store %s reachable again", state.settings.public()["store_url"])
    state.store_error = None
    return True


@dataclass
class UserRead:
    state: UserState | None
    degraded: bool


async def read_user(app: AppState, user_id: str, with_seen: bool) -> UserRead:
    """The user's stored state, or ``degraded`` when the store fails or is too slow."""
    store = app.store
    if store is None:
        return UserRead(None, True)
    try:
        state = await asyncio.wait_for(
            store.get_user(user_id, with_seen=with_seen), app.settings.store_timeout_s
        )
    except (StoreError, TimeoutError, OSError, ConnectionError) as exc:
        log.warning(
            "store read for user %r failed (%s): degraded answer", user_id, type(exc).__name__
        )
        return UserRead(None, True)
    return UserRead(state, False)


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def popular_fallback(
    model: LoadedModel, blocked: set[int], k: int
) -> tuple[list[int], list[float]]:
    """Top-k of the manifest's popularity list minus ``blocked``, topped up in catalog order.

    Scores are ``1 / (1 + rank in the popularity list)``; top-up items score 0.
    """
    rows: list[int] = []
    scores: list[float] = []
    taken: set[int] = set()
    for rank, row in enumerate(model.popular.tolist()):
        if len(rows) >= k:
            return rows, scores
        if row not in blocked and row not in taken:
            rows.append(row)
            scores.append(1.0 / (1.0 + rank))
            taken.add(row)
    for row in range(model.num_items):
        if len(rows) >= k:
            break
        if row not in blocked and row not in taken:
            rows.append(row)
            scores.append(0.0)
    return rows, scores


async def recommend(
    app: AppState, model: LoadedModel, req: RecommendRequest, k: int
) -> RecommendResponse:
    """Top-k for one request on ``model`` (the version read once at the start of the request)."""
    with app.batcher.incoming() as arrival:
        return await _recommend(app, model, req, k, arrival)


async def _recommend(
    app: AppState, model: LoadedModel, req: RecommendRequest, k: int, arrival: Arrival
) -> RecommendResponse:
    metrics = app.metrics
    stored: UserState | None = None
    degraded = False
    if req.user_id is not None:
        read = await read_user(app, req.user_id, with_seen=req.exclude_seen)
        stored, degraded = read.state, read.degraded

    index = model.id_to_index
    ignored = _unique([x for x in (*req.history, *req.dislikes, *req.exclude) if x not in index])
    history = (stored.positives if stored else []) + list(req.history)
    dislikes = ([item for item, _ts in stored.dislikes] if stored else []) + list(req.dislikes)

    blocked_ids: set[str] = set(dislikes) | set(req.exclude)
    if req.exclude_seen:
        blocked_ids |= set(history)
        if stored is not None and stored.seen:
            blocked_ids |= stored.seen
    blocked = {index[x] for x in blocked_ids if x in index}

    known_history = [x for x in history if x in index]
    fallback: Literal["popular"] | None = None
    if not known_history:
        fallback = "popular"
        metrics.fallbacks.labels("popular").inc()
        arrival.landed()  # no query for the batcher
        rows, scores = popular_fallback(model, blocked, k)
        metrics.filtered.inc(len(blocked))
    else:
        recent_dislikes = [index[x] for x in dislikes if x in index][-app.settings.demote_recent :]
        query = Query(
            model=model,
            k=k,
            blocked=blocked,
            history=model.tokens(known_history, model.history_length),
            dislikes=model.tokens(dislikes, model.dislike_length),
            demote_rows=np.asarray(recent_dislikes, dtype=np.int64),
        )
        result = await app.batcher.submit(query, arrival)
        rows, scores = result.rows.tolist(), result.scores.tolist()
        metrics.filtered.inc(result.filtered)
        metrics.widened.inc(result.searches - 1)
        metrics.demoted.inc(result.demoted)
        if result.exact:
            metrics.exact.inc()
    if degraded:
        metrics.degraded.labels("/v1/recommend").inc()
    if ignored:
        metrics.ignored_items.inc(len(ignored))
    ids = model.item_ids
    return RecommendResponse(
        user_id=req.user_id,
        items=[
            ScoredItem(item_id=str(ids[r]), score=float(s))
            for r, s in zip(rows, scores, strict=True)
        ],
        model_version=model.version,
        fallback=fallback,
        degraded=degraded,
        ignored_items=ignored,
    )


async def similar(app: AppState, model: LoadedModel, row: int, k: int) -> list[ScoredItem]:
    """The ``k`` items nearest to item ``row`` (itself excluded), by inner product."""
    query = Query(model=model, k=k, blocked={row}, vector=model.embeddings[row])
    result = await app.batcher.submit(query)
    ids = model.item_ids
    return [
        ScoredItem(item_id=str(ids[r]), score=float(s))
        for r, s in zip(result.rows.tolist(), result.scores.tolist(), strict=True)
    ]
