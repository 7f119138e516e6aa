"""HTTP routes (SPEC "HTTP API"). Validation errors are 422 with the field and why."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response
from fastapi.responses import JSONResponse

from feature_store.base import StoreError
from feature_store.events import EventError, make_event
from serving import service
from serving.deps import ModelDep, StateDep
from serving.schemas import (
    ERROR_RESPONSES,
    ErrorResponse,
    EventsRequest,
    EventsResponse,
    HealthResponse,
    RecommendRequest,
    RecommendResponse,
    SimilarResponse,
)
from serving.settings import K_CAP

log = logging.getLogger(__name__)

router = APIRouter()


class InputError(Exception):
    """A request value passed schema validation but breaks a configured limit or a data rule."""

    def __init__(self, field: str, message: str, type_: str = "value_error") -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.type = type_


def _check_lists(req: RecommendRequest, limit: int) -> None:
    for name in ("history", "dislikes", "exclude"):
        n = len(getattr(req, name))
        if n > limit:
            raise InputError(
                f"body.{name}", f"has {n} items; at most {limit} are accepted", "too_long"
            )


@router.post(
    "/v1/recommend", response_model=RecommendResponse, responses=ERROR_RESPONSES, tags=["retrieval"]
)
async def recommend(req: RecommendRequest, state: StateDep, model: ModelDep) -> RecommendResponse:
    """Top-k candidates for a user and/or the given history, never an item they disliked.

    With `user_id`, the stored history and dislikes are merged with the request's.
    No usable history -> the popular list (`"fallback": "popular"`). Unknown item ids
    are ignored and listed in `ignored_items`. Store down -> `"degraded": true`.
    """
    settings = state.settings
    k = settings.default_k if req.k is None else req.k
    if k > settings.max_k:
        raise InputError(
            "body.k", f"is {k}; this server accepts at most {settings.max_k}", "less_than_equal"
        )
    _check_lists(req, settings.max_list_length)
    return await service.recommend(state, model, req, k)


@router.post(
    "/v1/events", response_model=EventsResponse, responses=ERROR_RESPONSES, tags=["events"]
)
async def post_events(req: EventsRequest, state: StateDep) -> EventsResponse:
    """Write interaction events (idempotent per `event_id`).

    When this returns, the events are durable and the next `/v1/recommend` for the
    user reflects them. If the store is unreachable the answer is 503 and nothing
    was acknowledged (a retry with the same `event_id`s is safe).
    """
    settings = state.settings
    if len(req.events) > settings.max_events:
        raise InputError(
            "body.events",
            f"has {len(req.events)} events; at most {settings.max_events} per call",
            "too_long",
        )
    events = []
    for i, raw in enumerate(req.events):
        try:
            events.append(make_event(raw.model_dump(exclude_none=True), index=i))
        except EventError as exc:
            raise InputError(f"body.events.{i}.{exc.field}", str(exc).split(": ", 1)[-1]) from exc
    if state.store is None:
        raise HTTPException(
            503, f"online store unavailable: {state.store_error}; nothing was written"
        )
    try:
        result = await asyncio.wait_for(
            state.store.append_events(events), max(5.0, settings.store_timeout_s)
        )
    except (StoreError, TimeoutError, OSError, ConnectionError) as exc:
        state.metrics.events.labels("failed").inc(len(events))
        raise HTTPException(
            503,
            f"online store unavailable ({type(exc).__name__}); nothing was acknowledged, retrying is safe",
        ) from exc
    state.metrics.events.labels("accepted").inc(result.accepted)
    state.metrics.events.labels("duplicate").inc(result.duplicates)
    return EventsResponse(accepted=result.accepted, duplicates=result.duplicates)


@router.get(
    "/v1/items/{item_id}/similar",
    response_model=SimilarResponse,
    responses={404: {"model": ErrorResponse, "description": "unknown item"}, **ERROR_RESPONSES},
    tags=["retrieval"],
)
async def similar_items(
    state: StateDep,
    model: ModelDep,
    item_id: Annotated[str, Path(min_length=1, max_length=256, examples=["i17"])],
    k: Annotated[int, Query(ge=1, le=K_CAP, description="number of neighbours")] = 20,
) -> SimilarResponse:
    """The `k` items nearest to `item_id` in the served embedding space (itself excluded)."""
    if k > state.settings.max_k:
        raise InputError(
            "query.k",
            f"is {k}; this server accepts at most {state.settings.max_k}",
            "less_than_equal",
        )
    row = model.id_to_index.get(item_id)
    if row is None:
        raise HTTPException(404, f"item {item_id!r} is not in model version {model.version}")
    items = await service.similar(state, model, row, k)
    return SimilarResponse(item_id=item_id, items=items, model_version=model.version)


@router.get("/v1/model", tags=["model"], responses=ERROR_RESPONSES)
async def model_info(model: ModelDep) -> dict[str, Any]:
    """The served version's manifest (serving subset: no training config)."""
    return model.public_manifest()


@router.get("/healthz", response_model=HealthResponse, tags=["ops"])
async def healthz() -> HealthResponse:
    """The process is alive (says nothing about the model or the store)."""
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse}},
    tags=["ops"],
)
async def readyz(state: StateDep) -> Response:
    """200 when a model is loaded and the store answers within the timeout, else 503 saying which."""
    model = state.holder.current
    store_ok = False
    if state.store is not None and await service.reopen_store(state):
        try:
            store_ok = bool(
                await asyncio.wait_for(state.store.ping(), state.settings.store_timeout_s)
            )
        except (StoreError, TimeoutError, OSError, ConnectionError):
            store_ok = False
    problems = []
    if model is None:
        problems.append(f"no model loaded ({state.holder.last_error or 'nothing published yet'})")
    if not store_ok:
        problems.append(f"store unreachable ({state.store_error or 'ping failed or timed out'})")
    body = HealthResponse(
        status="ready" if not problems else "not_ready",
        model_version=model.version if model else None,
        store="ok" if store_ok else "unreachable",
        detail="; ".join(problems) or None,
    )
    return JSONResponse(body.model_dump(), status_code=200 if not problems else 503)


@router.get("/metrics", tags=["ops"], response_class=Response)
async def metrics(state: StateDep) -> Response:
    """Prometheus text format."""
    data, content_type = state.metrics.render()
    return Response(data, media_type=content_type)


floor_router = APIRouter()


@floor_router.post("/_floor", include_in_schema=False)
async def floor(req: RecommendRequest) -> dict[str, Any]:
    """Benchmark floor: parses the same body as /v1/recommend, returns a fixed payload."""
    return {"items": [], "model_version": "floor"}
