"""The API's error body (:class:`ErrorResponse`, every 4xx/5xx) and each route's error responses.

The ``*_RESPONSES`` tables are what the routes declare in the OpenAPI document (status
-> the body's model and when it happens); the app's exception handlers
(:mod:`serving.app`) write the bodies.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


BAD_BODY = _error("the body is not parsable JSON (nested too deeply, not UTF-8)")
TOO_LARGE = _error("request body larger than the configured limit (bytes)")
NOT_JSON = _error("the body is not sent as Content-Type: application/json")
INVALID = _error("invalid request: `errors` names each field and why")
NO_MODEL = _error("no model loaded yet (Retry-After says when to try again)")

RECOMMEND_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: BAD_BODY,
    413: TOO_LARGE,
    415: NOT_JSON,
    422: INVALID,
    503: _error(
        "no model loaded yet; or, with degraded_unknown_users=refuse, the store is down and "
        "the user is unknown to this server"
    ),
}
EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: BAD_BODY,
    413: TOO_LARGE,
    415: NOT_JSON,
    422: INVALID,
    503: _error(
        "the store failed or timed out: outcome unknown, retry with the same event_id values"
    ),
}
SIMILAR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: _error("the item is not in the served model version"),
    422: INVALID,
    503: NO_MODEL,
}
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {503: NO_MODEL}
