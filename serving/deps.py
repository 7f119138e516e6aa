"""Request dependencies: routes read ``state: StateDep, model: ModelDep, ...``.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in
its thread pool, a thread hop (and two context switches) per dependency per
request for what is an attribute read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from feature_store.base import OnlineStore
from serving.batcher import Batcher
from serving.metrics import Metrics
from serving.model import LoadedModel
from serving.reload import ModelHolder, Reloader
from serving.settings import Settings
from serving.usercache import DislikeCache


@dataclass
class AppState:
    """Everything the app holds between requests (one per app instance / worker)."""

    settings: Settings
    metrics: Metrics
    holder: ModelHolder
    batcher: Batcher
    reloader: Reloader
    dislike_cache: DislikeCache
    store: OnlineStore | None = None
    store_error: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.twotower
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_model(state: StateDep) -> LoadedModel:
    """The current version, read once per request (hot reload swaps the holder, not this object)."""
    model = state.holder.current
    if model is None:
        reason = state.holder.last_error or f"nothing published in {state.settings.artifacts} yet"
        retry = max(1, round(state.settings.reload_poll_s))
        raise HTTPException(503, f"no model loaded: {reason}", {"Retry-After": str(retry)})
    return model


ModelDep = Annotated[LoadedModel, Depends(get_model)]
