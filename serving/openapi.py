"""The OpenAPI document as this server enforces it.

The request models carry the hard caps of the API (k <= 1000, lists <= 10,000
ids); a deployment may configure lower limits (``max_k``, ``max_list_length``,
``max_events``) and a different ``default_k``. The schema served at
``/openapi.json`` states the configured values, so a client generated from it,
or a property-based checker, sees exactly what the server accepts.
"""

from __future__ import annotations

from typing import Any

from serving.settings import Settings


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
    return schema
