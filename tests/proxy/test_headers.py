"""Outgoing header processing: order, forwarding headers, identity headers."""

from __future__ import annotations

from twisted.web.http_headers import Headers

from nbgateway.proxy.headers import (
    TrustedProxies,
    filter_response_headers,
    identity_headers,
    prepare_upstream_headers,
)
from nbgateway.routes.identity import Identity


def prep(inbound: dict, **kw):
    h = Headers({k: v if isinstance(v, list) else [v] for k, v in inbound.items()})
    args = dict(host_header="app.example", target_netloc="backend:8080", pass_host_header=False,
                client_ip="100.64.0.10", over_tls=True)
    args.update(kw)
    out = prepare_upstream_headers(h, **args)
    return {k.decode().lower(): [v.decode() for v in vs] for k, vs in out.getAllRawHeaders()}


def test_identity_stamped_b42():
    ident = Identity("u1", "alice@x", ("g1", "g2"), ("eng", "ops"), "oidc")
    out = prep({}, identity=ident)
    assert out["x-netbird-user"] == ["alice@x"]
    assert out["x-netbird-groups"] == ["eng,ops"]


def test_group_label_fallback_to_id_b43():
    assert identity_headers(Identity("u", "e", ("a", "b", "c"), ("alpha", "", "")))[
        "X-NetBird-Groups"] == "alpha,b,c"


def test_bad_labels_dropped_and_header_absent_when_none_left_b44():
    h = identity_headers(Identity("u", "e", ("a", "b"), ("x,y", "bad\r\nname")))
    assert "X-NetBird-Groups" not in h
    h = identity_headers(Identity("u", "e", ("a", "b"), ("x,y", "ok")))
    assert h["X-NetBird-Groups"] == "ok"


def test_bad_email_omitted_groups_still_stamped_b45():
    h = identity_headers(Identity("u", "al\r\nice", ("g",), ("eng",)))
    assert "X-NetBird-User" not in h and h["X-NetBird-Groups"] == "eng"
    h = identity_headers(Identity("u", "Zoë@x", ("g",), ("eng",)))
    assert "X-NetBird-User" not in h


def test_client_identity_headers_never_pass_b46():
    out = prep({"X-NetBird-User": "mallory", "X-NetBird-Groups": "admins"})
    assert "x-netbird-user" not in out and "x-netbird-groups" not in out
    out = prep({"X-NetBird-User": "mallory"}, identity=Identity("u", "alice@x"))
    assert out["x-netbird-user"] == ["alice@x"]
    # custom headers cannot set identity either
    out = prep({}, custom_headers={"X-NetBird-User": "custom"})
    assert "x-netbird-user" not in out


def test_session_cookie_removed_b47():
    out = prep({"Cookie": "a=1; nb_session=T"})
    assert out["cookie"] == ["a=1"]
    out = prep({"Cookie": "nb_session=T"}, custom_headers={"Cookie": "x=2"})
    assert "cookie" not in out


def test_header_auth_header_removed_b48():
    out = prep({"X-API-Key": "secret", "Accept": "*/*"}, header_auth_names=["X-API-Key"])
    assert "x-api-key" not in out and out["accept"] == ["*/*"]


def test_hop_by_hop_and_connection_named_removed():
    out = prep({"Connection": "keep-alive, X-Secret", "X-Secret": "1", "Keep-Alive": "5",
                "Transfer-Encoding": "chunked", "Upgrade": "websocket", "TE": "trailers, gzip",
                "Proxy-Authorization": "Basic x", "Forwarded": "for=1.2.3.4"})
    for h in ("connection", "x-secret", "keep-alive", "transfer-encoding", "upgrade",
              "proxy-authorization", "forwarded"):
        assert h not in out, h
    assert out["te"] == ["trailers"]


def test_keep_upgrade():
    out = prep({"Upgrade": "websocket", "Connection": "Upgrade"}, keep_upgrade=True)
    assert out["upgrade"] == ["websocket"] and out["connection"] == ["Upgrade"]


def test_forwarding_untrusted_b53():
    out = prep({"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"},
               over_tls=False, host_header="app.example")
    assert out["x-forwarded-for"] == ["100.64.0.10"]
    assert out["x-real-ip"] == ["100.64.0.10"]
    assert out["x-forwarded-proto"] == ["http"]
    assert out["x-forwarded-port"] == ["80"]
    assert out["x-forwarded-host"] == ["app.example"]
    out = prep({}, host_header="app.example:8443")
    assert out["x-forwarded-port"] == ["8443"]
    out = prep({}, over_tls=False, forwarded_proto="https")
    assert out["x-forwarded-proto"] == ["https"]


def test_forwarding_trusted():
    trusted = TrustedProxies(["10.0.0.0/8"])
    out = prep({"X-Forwarded-For": "203.0.113.7, 10.1.1.1", "X-Forwarded-Proto": "https"},
               client_ip="10.2.2.2", trusted_proxies=trusted, over_tls=False)
    assert out["x-forwarded-for"] == ["203.0.113.7, 10.1.1.1, 10.2.2.2"]
    assert out["x-real-ip"] == ["203.0.113.7"]
    assert out["x-forwarded-proto"] == ["https"]
    out = prep({"X-Forwarded-For": "10.9.9.9"}, client_ip="10.2.2.2", trusted_proxies=trusted)
    assert out["x-real-ip"] == ["10.9.9.9"]


def test_host_header_b59():
    assert prep({}, pass_host_header=False)["host"] == ["backend:8080"]
    assert prep({}, pass_host_header=True, host_header="app.example:444")["host"] == [
        "app.example:444"]


def test_custom_headers_override_but_forwarding_wins():
    out = prep({"Authorization": "client"}, custom_headers={"Authorization": "Bearer s",
                                                          "X-Forwarded-For": "spoof"})
    assert out["authorization"] == ["Bearer s"]
    assert out["x-forwarded-for"] == ["100.64.0.10"]


def test_response_filter():
    h = Headers({"Connection": ["close, X-Internal"], "X-Internal": ["1"], "Content-Type": ["a"],
                 "Transfer-Encoding": ["chunked"]})
    out = filter_response_headers(h)
    assert [k for k, _ in out.getAllRawHeaders()] == [b"Content-Type"]
