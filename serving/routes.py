"""HTTP routes (docs/CONTRACT.md, "HTTP API"). Validation errors are 422 with the field and why."""

from __future__ import annotations

import asyncio
import email.message
import functools
import logging
import math
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic_core import to_json

from feature_store.base import AppendResult, StoreOutcomeUnknown, StoreUnavailable
from feature_store.events import DISLIKE, MAX_FUTURE_SKEW_S, Event, EventError, make_event
from serving import service
from serving.deps import AppState, ModelDep, StateDep
from serving.errors import (
    EVENTS_RESPONSES,
    MODEL_RESPONSES,
    RECOMMEND_RESPONSES,
    SIMILAR_RESPONSES,
)
from serving.schemas import (
    MAX_TS,
    EventsRequest,
    EventsResponse,
    HealthResponse,
    ModelResponse,
    RecommendRequest,
    RecommendResponse,
    SimilarResponse,
    TsAdjusted,
)
from serving.settings import K_CAP, Settings

log = logging.getLogger(__name__)

router = APIRouter()


class InputError(Exception):
    """A request value passed schema validation but breaks a configured limit or a data rule."""

    def __init__(self, field: str, message: str, type_: str = "value_error") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.type = type_


def is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json`` (parameters such as charset allowed)."""
    if not content_type:
        return False
    if content_type == "application/json":
        return True  # the common case, without parsing a MIME header
    return _is_json_type(content_type)


@functools.lru_cache(maxsize=256)
def _is_json_type(content_type: str) -> bool:
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def require_json(request: Request) -> None:
    """415 for a non-empty body that is not declared JSON (runs before body validation)."""
    content_type = request.headers.get("content-type")
    if is_json(content_type) or not await request.body():
        return
    got = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
    raise HTTPException(
        415,
        f"body: sent with {got}; send JSON with Content-Type: application/json "
        "(curl: -H 'Content-Type: application/json')",
    )


JsonBody = [Depends(require_json)]


RECOMMEND_PATH = "/v1/recommend"


def checked_k(req: RecommendRequest, settings: Settings) -> int:
    """The request's k (the server's default when absent), after this server's limits on
    k and on the lengths of the request's lists.

    Raises:
      InputError: a limit broken (422 naming the field).
    """
    k = settings.default_k if req.k is None else req.k
    if k > settings.max_k:
        raise InputError(
            "body.k", f"is {k}; this server accepts at most {settings.max_k}", "less_than_equal"
        )
    limit = settings.max_list_length
    for name in ("history", "dislikes", "exclude"):
        n = len(getattr(req, name))
        if n > limit:
            raise InputError(
                f"body.{name}", f"has {n} items; at most {limit} are accepted", "too_long"
            )
    return k


@router.post(
    RECOMMEND_PATH,
    response_model=RecommendResponse,
    responses=RECOMMEND_RESPONSES,
    dependencies=JsonBody,
    tags=["retrieval"],
)
async def recommend(
    state: StateDep,
    model: ModelDep,
    req: Annotated[RecommendRequest | None, Body()] = None,
) -> Response:
    """Top-k candidates for a user and/or the given history, never an item they disliked.

    With `user_id`, the stored history and dislikes are merged with the request's.
    No usable history -> the popular list (`"fallback": "popular"`), topped up from
    the rest of the catalog so `k` is exact. An empty body (or `{}`, or `null`) is the
    same as a body with every field at its default: the popular list. Unknown item
    ids are ignored and listed in `ignored_items`. Store down or slow ->
    `"degraded": true`: the request's lists plus the dislikes this server last
    knew for the user are used.
    """
    req = req if req is not None else RecommendRequest()
    k = checked_k(req, state.settings)
    body = await service.recommend(state, model, req, k)
    # Encoded once, here (pydantic-core's encoder: the same JSON the response model gives);
    # a Response is passed through by FastAPI without validating the body a second time.
    return Response(to_json(body), media_type="application/json")


@router.post(
    "/v1/events",
    response_model=EventsResponse,
    response_model_exclude_none=True,
    responses=EVENTS_RESPONSES,
    dependencies=JsonBody,
    tags=["events"],
)
async def post_events(req: EventsRequest, state: StateDep) -> EventsResponse:
    """Write interaction events (idempotent per `(user_id, event_id)`).

    When this returns 200, the events are durable and the next `/v1/recommend` for
    the user reflects them. A 503 means the store failed or did not answer within
    `store_write_timeout_s`: the outcome is unknown (some or all events may have
    been written), and a retry with the same `event_id` values is safe. Dislikes
    in the call are filtered by this server from the moment it validated them.

    The same `(user_id, event_id)` twice in one call is one event: the first copy is
    written, later copies count as `duplicates` (as they would in a later call). A
    `ts` ahead of the server's clock by more than the allowance is recorded as the
    receive time and reported in `ts_adjusted`. The call is all or nothing: one
    invalid event refuses the whole call (422 naming it) and nothing is written.
    """
    settings = state.settings
    if len(req.events) > settings.max_events:
        raise InputError(
            "body.events",
            f"has {len(req.events)} events; at most {settings.max_events} per call",
            "too_long",
        )
    events, adjusted = _checked_events(req)
    if adjusted:
        state.metrics.ts_adjusted.inc(len(adjusted))
        log.info(
            "%d event(s) stamped more than %.0f s ahead of this server's clock recorded at "
            "receive time (client clock fast?)",
            len(adjusted),
            MAX_FUTURE_SKEW_S,
        )
    _learn_dislikes(state, events)
    result = await _append(state, events)
    state.metrics.events.labels("accepted").inc(result.accepted)
    state.metrics.events.labels("duplicate").inc(result.duplicates)
    return EventsResponse(
        accepted=result.accepted, duplicates=result.duplicates, ts_adjusted=adjusted or None
    )


def _checked_events(req: EventsRequest) -> tuple[list[Event], list[TsAdjusted]]:
    """The call's events, each checked (422 naming the first bad one), and the ``ts`` moved
    back to the receive time because they were too far ahead of this server's clock."""
    now = time.time()
    events = []
    adjusted: list[TsAdjusted] = []
    for i, raw in enumerate(req.events):
        data = raw.model_dump(exclude_none=True)
        ts = data.get("ts")
        if ts is not None and math.isfinite(ts):
            if ts > MAX_TS:
                raise InputError(
                    f"body.events.{i}.ts",
                    f"{ts} is after {MAX_TS:.0f} (2100-01-01): timestamps are seconds since "
                    "the epoch, not milliseconds",
                    "less_than_equal",
                )
            if ts > now + MAX_FUTURE_SKEW_S:
                adjusted.append(TsAdjusted(index=i, sent=ts, recorded=now))
                data["ts"] = now
        try:
            events.append(make_event(data, index=i, now=now))
        except EventError as exc:
            raise InputError(f"body.events.{i}.{exc.field}", str(exc).split(": ", 1)[-1]) from exc
    return events, adjusted


def _learn_dislikes(state: AppState, events: list[Event]) -> None:
    """This process filters the call's dislikes from now on (degraded mode's cache)."""
    first: dict[tuple[str, str], object] = {}
    for ev in events:
        # A repeated (user_id, event_id) in one call is a duplicate the store does not apply:
        # only the first copy may teach this process a dislike.
        if first.setdefault((ev.user_id, ev.event_id), ev) is ev and ev.type == DISLIKE:
            state.dislike_cache.learn(ev.user_id, (ev.item_id,), complete=False)
    state.metrics.cache_users.set(len(state.dislike_cache))


async def _append(state: AppState, events: list[Event]) -> AppendResult:
    """Write ``events`` within ``store_write_timeout_s``; 503 saying whether a retry is safe."""
    settings = state.settings
    retry = {"Retry-After": str(service.STORE_RETRY_AFTER_S)}
    if state.store is None:
        raise HTTPException(
            503, f"online store unavailable: {state.store_error}; nothing was written", retry
        )
    try:
        return await asyncio.wait_for(
            state.store.append_events(events), settings.store_write_timeout_s
        )
    except Exception as exc:  # any backend failure
        state.metrics.events.labels("failed").inc(len(events))
        reason = (
            f"no answer within {settings.store_write_timeout_s}s"
            if isinstance(exc, TimeoutError)
            else type(exc).__name__
        )
        log.warning("writing %d events failed (%s): answered 503", len(events), reason)
        if isinstance(exc, StoreUnavailable) and not isinstance(exc, StoreOutcomeUnknown):
            # The store says nothing of the batch was applied: a plain retry is safe.
            outcome = "nothing was written; retry"
        else:
            outcome = (
                "outcome unknown; retry with the same event_id values (events sent "
                "without an event_id cannot be told apart from a second copy)"
            )
        raise HTTPException(503, f"online store unavailable ({reason}); {outcome}", retry) from exc


@router.get(
    "/v1/items/{item_id}/similar",
    response_model=SimilarResponse,
    responses=SIMILAR_RESPONSES,
    tags=["retrieval"],
)
async def similar_items(
    state: StateDep,
    model: ModelDep,
    item_id: Annotated[str, Path(min_length=1, max_length=256, examples=["i17"])],
    k: Annotated[
        int | None,
        Query(ge=1, le=K_CAP, description="number of neighbours (absent: the server's default)"),
    ] = None,
) -> SimilarResponse:
    """The `k` items nearest to `item_id` in the served embedding space (itself excluded)."""
    settings = state.settings
    k = settings.default_k if k is None else k
    if k > settings.max_k:
        raise InputError(
            "query.k", f"is {k}; this server accepts at most {settings.max_k}", "less_than_equal"
        )
    row = model.id_to_index.get(item_id)
    if row is None:
        raise HTTPException(404, f"item {item_id!r} is not in model version {model.version}")
    items = await service.similar(state, model, row, k)
    return SimilarResponse(item_id=item_id, items=items, model_version=model.version)


@router.get("/v1/model", response_model=ModelResponse, responses=MODEL_RESPONSES, tags=["model"])
async def model_info(model: ModelDep) -> ModelResponse:
    """The served version's manifest (serving subset: no training config)."""
    return ModelResponse.model_validate(model.public_manifest())


@router.get("/healthz", response_model=HealthResponse, tags=["ops"])
async def healthz() -> HealthResponse:
    """The process is alive (says nothing about the model or the store): the liveness probe."""
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=HealthResponse,
    responses={
        503: {"model": HealthResponse, "description": "not ready: `detail` says why"},
        422: RECOMMEND_RESPONSES[422],
    },
    tags=["ops"],
)
async def readyz(
    state: StateDep,
    store: Annotated[
        Literal["required", "optional"],
        Query(
            description="`required` (default): ready means a model is loaded, the batcher runs "
            "and the store answers within store_timeout_s. `optional`: the store may be down "
            "(answers are then degraded), for a load balancer that should keep a pod serving "
            "through a store outage (the Kubernetes readinessProbe)"
        ),
    ] = "required",
) -> Response:
    """200 when this server can answer, else 503 saying what is missing."""
    model = state.holder.current
    store_ok = False
    if state.store is not None and await service.reopen_store(state):
        try:
            store_ok = bool(
                await asyncio.wait_for(state.store.ping(), state.settings.store_timeout_s)
            )
        except Exception:  # any backend failure counts as unreachable
            store_ok = False
    batcher_ok = state.batcher.alive
    problems = []
    if model is None:
        problems.append(f"no model loaded ({state.holder.last_error or 'nothing published yet'})")
    if not batcher_ok:
        problems.append(f"batcher not running ({state.batcher.last_error or 'stopped'})")
    if not store_ok and store == "required":
        problems.append(f"store unreachable ({state.store_error or 'ping failed or timed out'})")
    notes = list(problems)
    if model is not None and state.holder.last_error:
        # Still ready (the last good version answers), but say that LATEST names another.
        notes.append(
            f"serving {model.version}: the published version failed to load "
            f"({state.holder.last_error})"
        )
    body = HealthResponse(
        status="ready" if not problems else "not_ready",
        model_version=model.version if model else None,
        store="ok" if store_ok else "unreachable",
        batcher="ok" if batcher_ok else "dead",
        detail="; ".join(notes) or None,
    )
    return JSONResponse(body.model_dump(), status_code=200 if not problems else 503)


@router.get(
    "/metrics",
    tags=["ops"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(state: StateDep) -> Response:
    """Prometheus text format (with several workers: summed over all of them)."""
    data, content_type = state.metrics.render()
    return Response(data, media_type=content_type)


floor_router = APIRouter()


@floor_router.post("/_floor", include_in_schema=False, dependencies=JsonBody)
async def floor(req: RecommendRequest) -> dict[str, object]:
    """Benchmark floor: parses the same body as /v1/recommend, returns a fixed payload."""
    return {"items": [], "model_version": "floor"}
