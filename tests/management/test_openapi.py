"""The OpenAPI document is true to the implementation.

Static part: every served route is documented (and only those), every ``$ref``
resolves. Dynamic part: schemathesis generates requests from
``GET /api/openapi.json`` of a live ``twistd nbmanagement`` and checks that no
response is a 5xx and that every status code, content type and JSON body
conforms to the document (bounded examples per operation).
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from nbgateway.management.api import build_openapi
from nbgateway.management.api.routes import Handlers, build_routes
from nbgateway.management.api.schemas import COMPONENTS

from .apiserver import BACKENDS, running_server

MAX_EXAMPLES = 15
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_every_route_documented_and_refs_resolve():
    doc = build_openapi()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(r.method, "/api" + r.template) for r in build_routes(Handlers(None))}
    assert documented == served
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[-1] in doc["components"]["schemas"]
    assert set(doc["components"]["schemas"]) == set(COMPONENTS)
    assert "x-decode-range" not in json.dumps(doc)
    ops = [op for ops in doc["paths"].values() for op in ops.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
    for op in ops:
        assert "401" in op["responses"]
        if "requestBody" in op:
            assert {"400", "413"} <= set(op["responses"])


@pytest.fixture(scope="module", params=BACKENDS)
def live(request, tmp_path_factory):
    with running_server(tmp_path_factory, request.param) as srv:
        # give generated service requests a domain that can succeed
        srv.add_domain("apps.test", "eu.proxy.test")
        yield srv


def _operation_ids(doc):
    return [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(live.url + "/api/openapi.json")


@pytest.mark.parametrize("operation_id", _operation_ids(build_openapi()))
def test_api_conforms_to_openapi(live, api_schema, operation_id):
    """Generated requests per operation: no 5xx, documented statuses/types/bodies only."""
    [op] = [r.ok() for r in api_schema.get_all_operations()
            if r.ok().definition.raw.get("operationId") == operation_id]
    headers = {"Authorization": f"Token {live.token}"}

    @given(case=op.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(base_url=live.url, headers=headers, checks=CHECKS, timeout=30)

    run()
