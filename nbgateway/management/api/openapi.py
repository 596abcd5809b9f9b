"""The OpenAPI 3 document served at ``GET /api/openapi.json``.

Generated from the live route table (:func:`.routes.build_routes`) and the
component schemas that the request decoder enforces (:mod:`.schemas`), so the
document cannot list an operation, parameter or body shape the server does not
have. Every operation documents its success response, the ``{"message",
"code"}`` envelope for 401 and for each error status it can return, and 413
for operations with a body (limit: :data:`.framework.MAX_BODY_SIZE`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.web import http

from .framework import MAX_BODY_SIZE, Route

_PARAM = re.compile(r"\{([A-Za-z0-9_]+)\}")

DESCRIPTION = f"""\
nbgateway management REST API, shaped like NetBird's (paths and JSON field names).

* Authentication: `Authorization: Token <personal access token>`. The first admin token is
  written to `DATADIR/admin-token` (mode 0600) when the data directory is initialised.
* Errors: `{{"message": "<lower-cased text>", "code": <http status>}}`. Validation errors
  are 422 with the upstream messages; a body that is not JSON is 400
  `couldn't parse JSON request`; a JSON value of the wrong type is 400 naming the field.
* Request bodies are limited to {MAX_BODY_SIZE} bytes (1 MiB); larger bodies get 413.
* `ProxyAccessLog.user_groups` and the `Peer` fields `public_key`, `endpoint`,
  `proxy_embedded`, `proxy_cluster` are nbgateway extensions, not upstream NetBird.
"""


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": http.RESPONSES.get(status, b"error").decode(),
        "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
    }
    if route.description:
        op["description"] = route.description
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1}}
              for name in _PARAM.findall(route.template)]
    params += [_query_param(q.name, q.schema, q.description) for q in route.query]
    if params:
        op["parameters"] = params
    if route.request_schema is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{route.request_schema}"}}}}
    content: dict[str, Any] = {}
    for ctype in route.response_content_types:
        if ctype == "application/json":
            content[ctype] = {"schema": route.response_schema or {"type": "object"}}
        elif ctype.startswith("text/"):
            content[ctype] = {"schema": {"type": "string"}}
        else:
            content[ctype] = {"schema": {"type": "string", "format": "binary"}}
    responses: dict[str, Any] = {
        str(route.response_status): {"description": "success", "content": content},
    }
    statuses = set(route.errors)
    if route.auth:
        statuses.add(401)
        op["security"] = [{"TokenAuth": []}]
    if route.request_schema is not None:
        statuses.update((400, 413))
    if route.query:
        statuses.add(422)
    for status in sorted(statuses):
        responses[str(status)] = _error_response(status)
    op["responses"] = responses
    return op


def _query_param(name: str, schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": "query", "required": False,
                           "schema": dict(schema)}
    if description:
        out["description"] = description
    return out


def build_document(routes: Iterable[Route], components: Mapping[str, Any], *,
                   version: str, server_url: str = "/") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = "/api" + route.template
        paths.setdefault(path, {})[route.method.lower()] = _operation(route)
    schemas = _strip_extensions(copy.deepcopy(dict(components)))
    return {
        "openapi": "3.0.3",
        "info": {"title": "nbgateway management API", "version": version,
                 "description": DESCRIPTION},
        "servers": [{"url": server_url}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"TokenAuth": {
                "type": "apiKey", "in": "header", "name": "Authorization",
                "description": "`Token <personal access token>`"}},
        },
    }


def _strip_extensions(node: Any) -> Any:
    """Drop private ``x-decode-*`` hints; publish their meaning as plain bounds."""
    if isinstance(node, dict):
        rng = node.pop("x-decode-range", None)
        if rng is not None:
            node.setdefault("minimum", rng[0])
            node.setdefault("maximum", rng[1])
        for value in node.values():
            _strip_extensions(value)
    elif isinstance(node, list):
        for value in node:
            _strip_extensions(value)
    return node
