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


def test_new_context_is_the_constructors_context():
    """routes.context.new_context (the front resource's per-request context)
    sets every field as the constructor does, with and without an entry."""
    from dataclasses import fields

    from nbgateway._proto import proxy_service_pb2 as pb
    from nbgateway.routes.context import RequestContext, new_context
    from nbgateway.routes.service import entry_from_mapping

    entry = entry_from_mapping(pb.ProxyMapping(
        id="svc", account_id="acct", domain="app.example",
        path=[pb.PathMapping(path="/", target="http://127.0.0.1:8081/")]))
    for args in ((True, "100.64.0.10", "app.example", "acct", entry, 12.5),
                 (False, "", "", None, None, 0.0)):
        overlay, source_ip, host, account, ent, started = args
        want = RequestContext(overlay=overlay, source_ip=source_ip, host=host,
                              listener_account=account, started=started)
        want.serve(ent)
        got = new_context(*args)
        assert type(got) is RequestContext
        for f in fields(RequestContext):
            assert getattr(got, f.name) == getattr(want, f.name), f.name
