"""The OpenAPI document as this server enforces it.

The request models carry the hard caps of the API (k <= 1000, lists <= 10,000
ids); a deployment may configure lower limits (``max_k``, ``max_list_length``,
``max_events``) and a different ``default_k``. The schema served at
``/openapi.json`` states the configured values, so a client generated from it,
or a property-based checker, sees exactly what the server accepts.

The body size limit (``max_body_bytes``, enforced for every route by
:class:`serving.middleware.LimitsAndTimingMiddleware`) has no JSON Schema
keyword: every request body states it in its description and as
``x-max-body-bytes``, and every POST operation documents the 413 answer with
the number.

:func:`apply_access` declares the API key security schemes (bearer and the
``X-API-Key`` header) on exactly the operations the server protects (the
same :func:`serving.auth.needs_key`), with their 401, and the 429 of the rate
limit on the operations it covers.
"""

from __future__ import annotations

from typing import Any

from serving.auth import (
    API_KEY_HEADER,
    SECURITY_REQUIREMENT,
    SECURITY_SCHEMES,
    needs_key,
    rate_limited,
)
from serving.settings import Settings

#: OpenAPI extension on each request body: the largest body accepted, in bytes.
MAX_BODY_BYTES_KEY = "x-max-body-bytes"
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}


class SchemaShapeError(RuntimeError):
    """The generated schema no longer has a node the limits are written into."""


def _node(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    node: Any = schema
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise SchemaShapeError(f"OpenAPI schema has no {'.'.join(path)} (stopped at {key!r})")
        node = node[key]
    if not isinstance(node, dict):
        raise SchemaShapeError(f"OpenAPI schema node {'.'.join(path)} is not an object")
    return node


def _integer_branch(node: dict[str, Any]) -> dict[str, Any]:
    """The ``{"type": "integer"}`` part of ``node`` (itself, or its anyOf branch)."""
    for branch in [node, *node.get("anyOf", [])]:
        if branch.get("type") == "integer":
            return branch
    raise SchemaShapeError(f"no integer branch in {node}")


def apply_limits(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Write ``settings``' limits and defaults into ``schema`` (in place; also returned)."""
    comps = _node(schema, "components", "schemas")
    rec = _node(comps, "RecommendRequest", "properties")
    for name in ("history", "dislikes", "exclude"):
        _node(rec, name)["maxItems"] = settings.max_list_length
    k = _node(rec, "k")
    _integer_branch(k)["maximum"] = settings.max_k
    k["default"] = settings.default_k
    _node(comps, "EventsRequest", "properties", "events")["maxItems"] = settings.max_events
    similar = _node(schema, "paths", "/v1/items/{item_id}/similar", "get")
    for param in similar.get("parameters", []):
        if param.get("name") == "k":
            _integer_branch(param["schema"])["maximum"] = settings.max_k
            param["schema"]["default"] = settings.default_k
            break
    else:
        raise SchemaShapeError("GET /v1/items/{item_id}/similar has no k parameter")
    _body_limit(schema, settings.max_body_bytes)
    return schema


def _body_limit(schema: dict[str, Any], limit: int) -> None:
    """State ``limit`` on every request body and as the 413 answer of every POST operation."""
    note = (
        f"At most {limit} bytes (TWOTOWER_SERVE__MAX_BODY_BYTES): a larger body is refused "
        "with 413 before it is parsed."
    )
    too_large = f"request body larger than {limit} bytes (TWOTOWER_SERVE__MAX_BODY_BYTES)"
    posts = 0
    for path_item in _node(schema, "paths").values():
        for method, operation in path_item.items():
            if not isinstance(operation, dict):
                continue
            body = operation.get("requestBody")
            if method != "post" and body is None:
                continue
            posts += method == "post"
            if body is not None:
                body["description"] = f"{body.get('description', '')} {note}".strip()
                body[MAX_BODY_BYTES_KEY] = limit
            response = operation.setdefault("responses", {}).setdefault(
                "413", {"content": {"application/json": {"schema": dict(_ERROR_REF)}}}
            )
            response["description"] = too_large
    if not posts:
        raise SchemaShapeError("OpenAPI schema has no POST operation to state the body limit on")


def apply_access(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Declare API keys and the rate limit as ``settings`` enforce them (in place; also returned)."""
    mode = settings.auth_mode
    rate = settings.rate_limit_per_s
    burst = settings.rate_limit_burst or max(1.0, rate)
    protected = 0
    for path, path_item in _node(schema, "paths").items():
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            if needs_key(mode, settings.metrics_auth, path):
                protected += 1
                operation["security"] = [dict(r) for r in SECURITY_REQUIREMENT]
                responses["401"] = {
                    "description": "no API key, a malformed one, or one this server does not "
                    f"know: send Authorization: Bearer <key> or {API_KEY_HEADER}: <key>",
                    "headers": {
                        "WWW-Authenticate": {
                            "description": 'Bearer realm="twotower" (with error="invalid_token" '
                            "for an unknown key)",
                            "schema": {"type": "string"},
                        }
                    },
                    "content": {"application/json": {"schema": dict(_ERROR_REF)}},
                }
            if rate > 0 and rate_limited(path):
                responses["429"] = {
                    "description": f"more than {rate:g} requests per second (burst {burst:g}) "
                    "from this API key, or from this client IP without a valid key, in one "
                    "server process; Retry-After says when to try again",
                    "headers": {
                        "Retry-After": {
                            "description": "seconds to wait",
                            "schema": {"type": "integer", "minimum": 1},
                        }
                    },
                    "content": {"application/json": {"schema": dict(_ERROR_REF)}},
                }
    if protected:
        schema.setdefault("components", {})["securitySchemes"] = {
            name: dict(scheme) for name, scheme in SECURITY_SCHEMES.items()
        }
    return schema


_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
