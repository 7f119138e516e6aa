"""Request and response models of the HTTP API (they are the OpenAPI schema).

Item ids are strings; integers are accepted and turned into their decimal
string (MovieLens-style ids). Unknown fields are refused, so a typo such as
``"dislike"`` for ``"dislikes"`` is a 422 naming the field, not a silent no-op.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, StrictBool, StrictInt

from feature_store.events import EVENT_TYPES, MAX_ID_LENGTH
from serving.settings import EVENTS_CAP, K_CAP, LIST_CAP


def _int_to_str(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Id = Annotated[
    str,
    BeforeValidator(_int_to_str),
    Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="opaque id (string; integers are accepted)",
    ),
]
IdList = Annotated[list[Id], Field(max_length=LIST_CAP)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Strict):
    """Ask for top-k candidates. Everything is optional except that an empty body gets the popular list."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_id": "u42", "k": 10},
                {"history": ["i1", "i7", "i3"], "dislikes": ["i9"], "k": 5, "exclude": ["i2"]},
            ]
        },
    )

    user_id: Id | None = Field(None, description="merge this user's stored history and dislikes")
    history: IdList = Field(default_factory=list, description="recent positive items, oldest first")
    dislikes: IdList = Field(
        default_factory=list, description="items the user disliked (never returned)"
    )
    exclude: IdList = Field(default_factory=list, description="items not to return in this answer")
    k: StrictInt | None = Field(
        None, ge=1, le=K_CAP, description="number of items (default 20, max 1000)"
    )
    exclude_seen: StrictBool = Field(
        True, description="also filter items the user already interacted with"
    )


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(
        description="inner product of user and item embeddings (popular fallback: 1/(1+rank))"
    )


class RecommendResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u42",
                    "items": [{"item_id": "i17", "score": 0.83}, {"item_id": "i5", "score": 0.79}],
                    "model_version": "20261122T051500123456Z-3f2a",
                    "fallback": None,
                    "degraded": False,
                    "ignored_items": [],
                }
            ]
        }
    )

    user_id: str | None
    items: list[ScoredItem]
    model_version: str
    fallback: Literal["popular"] | None = Field(
        None, description='"popular" when the user has no usable history (cold start)'
    )
    degraded: bool = Field(
        False,
        description="the online store was unreachable; only the request's own lists were used",
    )
    ignored_items: list[str] = Field(
        default_factory=list,
        description="item ids in the request that this model version does not know (ignored)",
    )


class EventIn(_Strict):
    """One interaction; ``make_event`` rules apply (ids 1..256 chars, ts in seconds since the epoch)."""

    event_id: Id | None = Field(None, description="idempotency key: the same id is accepted once")
    user_id: Id
    item_id: Id
    type: str = Field(description=f"one of {sorted(EVENT_TYPES)}", examples=["click", "dislike"])
    ts: Annotated[float, Strict()] | None = Field(
        None, description="seconds since the epoch (default: now)"
    )


class EventsRequest(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {
                            "event_id": "e-1",
                            "user_id": "u42",
                            "item_id": "i17",
                            "type": "click",
                            "ts": 1767225600.0,
                        },
                        {"event_id": "e-2", "user_id": "u42", "item_id": "i5", "type": "dislike"},
                    ]
                }
            ]
        },
    )

    events: list[EventIn] = Field(min_length=1, max_length=EVENTS_CAP)


class EventsResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"accepted": 2, "duplicates": 0}]})

    accepted: int = Field(description="events newly written")
    duplicates: int = Field(
        description="events whose event_id was already accepted (not applied again)"
    )


class SimilarResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model_version: str


class ErrorItem(BaseModel):
    field: str = Field(description='dotted location, e.g. "body.k" or "body.events.3.ts"')
    message: str
    type: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "validation_error",
                    "detail": "body.k: Input should be less than or equal to 1000",
                    "errors": [
                        {
                            "field": "body.k",
                            "message": "Input should be less than or equal to 1000",
                            "type": "less_than_equal",
                        }
                    ],
                }
            ]
        }
    )

    error: str
    detail: str
    errors: list[ErrorItem] = Field(default_factory=list)


class HealthResponse(BaseModel):
    status: str
    model_version: str | None = None
    store: str | None = None
    detail: str | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {
        "model": ErrorResponse,
        "description": "invalid request: `errors` names each field and why",
    },
    503: {
        "model": ErrorResponse,
        "description": "no model loaded yet (or the store is down, for writes)",
    },
}
