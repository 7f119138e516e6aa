"""Request and response models of the HTTP API (they are the OpenAPI schema).

JSON types are strict: ids are strings (``{"user_id": 5}`` is a 422 naming
``body.user_id``, not the user ``"5"``), booleans are booleans. ``k`` is an
integer in the JSON Schema sense: ``39`` and ``39.0`` are the same number and
both accepted; ``2.5``, ``"5"`` and ``true`` are not. Ids follow the event
rules everywhere: 1..256 characters, no NUL, CR or newline. Unknown fields are
refused, so a typo such as ``"dislike"`` for ``"dislikes"`` is a 422 naming
the field, not a silent no-op.

List and ``k`` limits shown here are the hard caps; the app's OpenAPI document
replaces them with the configured limits the server enforces
(:func:`serving.openapi.apply_limits`). The error body and each route's error
responses are :mod:`serving.errors`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

from feature_store.events import EVENT_TYPES, MAX_FUTURE_SKEW_S, MAX_ID_LENGTH, MIN_TS
from serving.settings import EVENTS_CAP, K_CAP, LIST_CAP

_FORBIDDEN = ("\x00", "\n", "\r")


def _no_control(value: str) -> str:
    if any(ch in value for ch in _FORBIDDEN):
        raise PydanticCustomError("id_characters", "must not contain NUL or newline characters")
    return value


def _integral(value: Any) -> Any:
    """JSON Schema integers: ``3.0`` is the integer 3; ``true`` is not a number."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Id = Annotated[
    str,
    Strict(),
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(_no_control),
    Field(
        description=f"opaque id: a string of 1..{MAX_ID_LENGTH} characters, no NUL/CR/newline",
        json_schema_extra={"pattern": "^[^\\u0000\\n\\r]+$"},
    ),
]
IdList = Annotated[list[Id], Field(max_length=LIST_CAP)]
K = Annotated[int, Strict(), Field(ge=1, le=K_CAP), BeforeValidator(_integral)]


#: OpenAPI extension on ``EventIn.ts``: a ts further than this ahead of the server's clock (s)
#: is not refused but recorded as the time the server received the event (see EventIn.ts).
TS_AHEAD_KEY = "x-recorded-as-receive-time-beyond-seconds-ahead"
#: Latest ts accepted at all (2100-01-01T00:00:00Z): later values are unit errors (ms, us).
MAX_TS = 4102444800.0

#: The event types as a JSON Schema enum (validated by make_event, which names the field).
_EVENT_TYPE_ENUM: dict[str, Any] = {"enum": sorted(EVENT_TYPES)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Strict):
    """Ask for top-k candidates. Every field is optional: an empty body (or ``{}``) gets the
    popular list."""

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
    k: K | None = Field(None, description="number of items (null or absent: the server's default)")
    exclude_seen: StrictBool = Field(
        True, description="also filter items the user already interacted with"
    )


class ScoredItem(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"item_id": "i17", "score": 0.83}]})

    item_id: str
    score: float = Field(
        description="inner product of user and item embeddings (popular fallback: 1/(1+rank), "
        "0 past the popularity list)"
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
        description="the online store failed or was too slow: the request's own lists and the "
        "dislikes this server last knew for the user were used",
    )
    ignored_items: list[str] = Field(
        default_factory=list,
        description="item ids in the request that this model version does not know (ignored)",
    )


class EventIn(_Strict):
    """One interaction (ids 1..256 characters, ts in seconds since the epoch)."""

    event_id: Id | None = Field(
        None,
        description="idempotency key: the same id is accepted once (without one the server "
        "makes a random id, so a retried event may count twice)",
    )
    user_id: Id
    item_id: Id
    type: Annotated[str, Strict()] = Field(
        description="what happened: view, click, like, purchase (positive), dislike (never "
        "recommended again), impression (seen only)",
        json_schema_extra=_EVENT_TYPE_ENUM,
        examples=["click", "dislike"],
    )
    ts: Annotated[float, Strict()] | None = Field(
        None,
        description=f"seconds since the epoch (default: now), from {MIN_TS:.0f} (2000-01-01) "
        f"to {MAX_TS:.0f} (2100-01-01; a larger number is milliseconds, refused). A ts more "
        f"than {MAX_FUTURE_SKEW_S:.0f} s ahead of the server's clock when the call arrives "
        "(a client clock running fast) is not refused: the event is recorded with the "
        "server's receive time as its ts, and the answer's `ts_adjusted` lists the event's "
        f"index with the ts sent and the ts recorded ({TS_AHEAD_KEY})",
        json_schema_extra={"minimum": MIN_TS, "maximum": MAX_TS, TS_AHEAD_KEY: MAX_FUTURE_SKEW_S},
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


class TsAdjusted(BaseModel):
    """An event whose ts was ahead of the server's clock and was recorded as the receive time."""

    index: int = Field(description="position of the event in the request's `events`")
    sent: float = Field(description="the ts the request carried")
    recorded: float = Field(description="the ts stored: when the server received the call")


class EventsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"accepted": 2, "duplicates": 0},
                {
                    "accepted": 1,
                    "duplicates": 0,
                    "ts_adjusted": [{"index": 0, "sent": 1767229200.0, "recorded": 1767225600.5}],
                },
            ]
        }
    )

    accepted: int = Field(description="events newly written")
    duplicates: int = Field(
        description="events whose (user_id, event_id) was already accepted, by an earlier call "
        "or earlier in this one (not applied again: the first copy stands)"
    )
    ts_adjusted: list[TsAdjusted] | None = Field(
        None,
        description="present only when some event's ts was more than "
        f"{MAX_FUTURE_SKEW_S:.0f} s ahead of the server's clock: those events were recorded "
        "with the receive time as their ts",
    )


class SimilarResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "item_id": "i17",
                    "items": [{"item_id": "i5", "score": 0.91}, {"item_id": "i30", "score": 0.88}],
                    "model_version": "20261122T051500123456Z-3f2a",
                }
            ]
        }
    )

    item_id: str
    items: list[ScoredItem]
    model_version: str


class ServingInfo(BaseModel):
    device: Literal["cpu", "gpu"] = Field(description="where the FAISS index lives")
    loaded_at: float = Field(description="when this process loaded the version (epoch seconds)")
    demote_threshold: float | None = Field(
        None,
        description="the item-item cosine above which soft demotion lowers an item "
        "for this version (null: demotion is off)",
    )


class ModelResponse(BaseModel):
    """The served version's manifest, without the training config (non-finite figures are null)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "version": "20261122T051500123456Z-3f2a",
                    "created_at": "2026-11-22T05:15:00+00:00",
                    "embedding_dim": 64,
                    "num_items": 1682,
                    "similarity": "dot",
                    "history_length": 20,
                    "dislike_length": 10,
                    "index": {
                        "type": "flat",
                        "metric": "inner_product",
                        "params": {},
                        "recall_at_k_vs_exact": 1.0,
                    },
                    "metrics": {"recall@20": 0.21, "ndcg@20": 0.12},
                    "baseline_popular": {"recall@20": 0.11, "ndcg@20": 0.06},
                    "data": {"source": "movielens:/data/ml-100k/u.data"},
                    "serving": {
                        "device": "cpu",
                        "loaded_at": 1795000000.0,
                        "demote_threshold": 0.58,
                    },
                }
            ]
        },
    )

    version: str
    created_at: str | float | None = None
    embedding_dim: int
    num_items: int
    similarity: str | None = None
    history_length: int
    dislike_length: int
    index: dict[str, Any] = Field(description="type, params, recall_at_k_vs_exact")
    metrics: dict[str, Any] = Field(default_factory=dict, description="held-out metrics")
    baseline_popular: dict[str, Any] | None = Field(
        None, description="the same metrics for a most-popular ranking"
    )
    data: dict[str, Any] | None = Field(None, description="source, counts, time range")
    serving: ServingInfo


class HealthResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "model_version": "20261122T051500123456Z-3f2a",
                    "store": "ok",
                    "batcher": "ok",
                    "detail": None,
                },
                {
                    "status": "not_ready",
                    "model_version": "20261122T051500123456Z-3f2a",
                    "store": "unreachable",
                    "batcher": "ok",
                    "detail": "store unreachable (ConnectionError: ...)",
                },
            ]
        }
    )

    status: Literal["ok", "ready", "not_ready"]
    model_version: str | None = None
    store: Literal["ok", "unreachable"] | None = None
    batcher: Literal["ok", "dead"] | None = None
    detail: str | None = None
