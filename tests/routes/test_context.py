"""The per-request context (nbgateway.routes.context): what each stage records."""

from __future__ import annotations

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.routes.context import RequestContext
from nbgateway.routes.identity import Identity
from nbgateway.routes.service import entry_from_mapping


def test_serve_records_entry_and_its_service():
    entry = entry_from_mapping(pb.ProxyMapping(
        id="s1", account_id="a", domain="app.example",
        path=[pb.PathMapping(path="/", target="http://10.0.0.1/")]))
    ctx = RequestContext(overlay=True, listener_account="a")
    ctx.serve(entry)
    assert ctx.entry is entry and ctx.service is entry.service
    ctx.serve(None)
    assert ctx.entry is None and ctx.service is None


def test_authenticated_records_identity_mechanism_and_user():
    ctx = RequestContext()
    assert (ctx.identity, ctx.auth_mechanism, ctx.user_id) == (None, "", "")
    who = Identity("u1", "alice@example", ("g1",), ("eng",), "oidc")
    ctx.authenticated(who, "oidc")
    assert (ctx.identity, ctx.auth_mechanism, ctx.user_id) == (who, "oidc", "u1")
    ctx.authenticated(None, "oidc")
    assert ctx.user_id == ""


def test_contexts_are_per_request_objects():
    a, b = RequestContext(), RequestContext()
    a.auth_mechanism = "ip_restricted"
    assert b.auth_mechanism == "" and a != b  # identity equality, no shared state
    assert not hasattr(a, "__dict__")  # slots: a typo'd attribute is an error
