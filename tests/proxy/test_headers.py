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


def _reference(inbound: Headers, **kw):
    """The header preparation as it was built before the one-pass rewrite:
    header by header through the public ``Headers`` API (the oracle)."""
    from nbgateway.proxy import headers as hm

    trusted = kw.get("trusted_proxies") or hm._NO_TRUSTED_PROXIES
    client_ip = kw["client_ip"]
    peer_trusted = bool(trusted) and trusted.contains(client_ip)

    def get(name):
        values = inbound.getRawHeaders(name)
        return ",".join(values) if values else None

    inbound_xff = get("X-Forwarded-For")
    fwd = {k: get(n) for k, n in (("host", "X-Forwarded-Host"), ("proto", "X-Forwarded-Proto"),
                                  ("port", "X-Forwarded-Port"), ("real", "X-Real-IP"))}
    cookies = inbound.getRawHeaders("Cookie") or []
    upgrade = get("Upgrade") if kw.get("keep_upgrade") else None
    named = set()
    for value in inbound.getRawHeaders("Connection") or []:
        named.update(t.strip().lower() for t in value.split(",") if t.strip())
    out = Headers()
    for name, values in inbound.getAllRawHeaders():
        lname = name.decode("latin-1").lower()
        if lname in hm.HOP_BY_HOP or lname in named or hm.is_protected(lname):
            continue
        if lname in ("host", "cookie"):
            continue
        out.setRawHeaders(name, list(values))
    te = get("TE")
    if te and "trailers" in [t.strip().lower() for t in te.split(",")]:
        out.setRawHeaders("TE", ["trailers"])
    if upgrade:
        out.setRawHeaders("Upgrade", [upgrade])
        out.setRawHeaders("Connection", ["Upgrade"])
    keys = {hm.header_key(n) for n in kw.get("header_auth_names", ())}
    for name in [n for n, _v in out.getAllRawHeaders() if hm.header_key(n) in keys]:
        out.removeHeader(name)
    for name, value in (kw.get("custom_headers") or {}).items():
        out.setRawHeaders(name, [value])
    for name in (hm.USER_HEADER, hm.GROUPS_HEADER, hm.ASSERTION_HEADER):
        out.removeHeader(name)
    for name, value in hm.identity_headers(kw.get("identity")).items():
        out.setRawHeaders(name, [value])
    if kw.get("assertion"):
        out.setRawHeaders(hm.ASSERTION_HEADER, [kw["assertion"]])
    fp = kw.get("forwarded_proto", "auto")
    proto = fp if fp in ("http", "https") else ("https" if kw["over_tls"] else "http")
    host_header = kw["host_header"]
    port = hm.host_port(host_header) or ("443" if proto == "https" else "80")
    if peer_trusted:
        xff = f"{inbound_xff}, {client_ip}" if inbound_xff else client_ip
        real = fwd["real"] or hm._real_client(inbound_xff, client_ip, trusted)
        values = (xff, real, fwd["host"] or host_header, fwd["proto"] or proto,
                  fwd["port"] or port)
    else:
        values = (client_ip, client_ip, host_header, proto, port)
    for name, value in zip(("X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host",
                            "X-Forwarded-Proto", "X-Forwarded-Port"), values, strict=True):
        out.setRawHeaders(name, [value])
    out.removeHeader("Cookie")
    kept = [p.strip() for v in cookies for p in v.split(";")
            if p.strip() and p.strip().split("=", 1)[0].strip() != hm.SESSION_COOKIE]
    if kept:
        out.setRawHeaders("Cookie", ["; ".join(kept)])
    out.setRawHeaders("Host", [host_header if kw["pass_host_header"] else kw["target_netloc"]])
    return out


def test_one_pass_preparation_equals_the_header_by_header_build():
    """Same names, values AND order as building through Headers.setRawHeaders,
    over a mix of spellings, duplicates, hop-by-hop, spoofed identity and
    forwarding headers, cookies, custom headers and trusted proxies."""
    import random

    rng = random.Random(20)
    names = ["Accept", "accept-encoding", "X-NetBird-User", "x_netbird_groups", "Forwarded",
             "X-Forwarded-For", "X-Forwarded-Host", "X-Real-IP", "Connection", "Keep-Alive",
             "TE", "Upgrade", "Cookie", "Host", "X-Token", "x_token", "Transfer-Encoding",
             "X-Custom", "Etag", "Dnt", "X-Forwarded-Proto", "Proxy-Authorization"]
    values = ["a", "b, c", "close, X-Custom", "trailers, gzip", "nb_session=s; a=1",
              "a=1;nb_session=2; b=3", "10.0.0.1, 100.64.0.9", "websocket", "héllo", "keep-alive"]
    idents = [Identity("u1", "alice@x", ("g1",), ("eng",), "oidc"),
              Identity("u2", "bob@x", ("g1", "g2"), ("eng", ""), "oidc"),
              Identity("u3", "carol@x", ["g3"], ["ops"], "oidc")]  # lists: never cached
    for _ in range(400):
        inbound = Headers()
        for _ in range(rng.randrange(0, 9)):
            inbound.addRawHeader(rng.choice(names), rng.choice(values))
        kw = dict(host_header=rng.choice(["app.example", "app.example:8443"]),
                  target_netloc="backend:8080", pass_host_header=rng.random() < 0.5,
                  client_ip=rng.choice(["100.64.0.10", "10.0.0.2"]),
                  over_tls=rng.random() < 0.5,
                  forwarded_proto=rng.choice(["auto", "http", "https"]),
                  trusted_proxies=rng.choice([None, TrustedProxies(["10.0.0.0/8"])]),
                  keep_upgrade=rng.random() < 0.3,
                  header_auth_names=rng.choice([(), ("X-Token",)]),
                  custom_headers=rng.choice([{}, {"X-Custom": "yes", "Host": "h"},
                                             {"X-Forwarded-For": "custom"}]),
                  identity=rng.choice([None, *idents]),
                  assertion=rng.choice([None, "jwt"]))
        before = [(n, list(v)) for n, v in inbound.getAllRawHeaders()]
        got = prepare_upstream_headers(inbound, **kw)
        assert [(n, list(v)) for n, v in inbound.getAllRawHeaders()] == before  # read only
        want = _reference(inbound, **kw)
        assert list(got.getAllRawHeaders()) == list(want.getAllRawHeaders()), (inbound, kw)
        for _n, values in got.getAllRawHeaders():  # no list shared with the inbound side
            assert all(values is not v for _m, v in inbound.getAllRawHeaders())
        # and it is an ordinary Headers: lookups by any spelling work
        assert got.getRawHeaders(b"host") == want.getRawHeaders(b"HOST")


def test_filtered_response_headers_equal_the_public_api_build():
    h = Headers()
    for name, value in (("Content-Type", "text/plain"), ("Connection", "close, X-Drop"),
                        ("x-drop", "1"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2"),
                        ("Keep-Alive", "timeout=5"), ("ETag", "x"), ("Content-Length", "3")):
        h.addRawHeader(name, value)
    out = filter_response_headers(h)
    want = Headers()
    for name in ("Content-Type", "Set-Cookie", "ETag", "Content-Length"):
        want.setRawHeaders(name, h.getRawHeaders(name))
    assert list(out.getAllRawHeaders()) == list(want.getAllRawHeaders())
    out.addRawHeader("x-more", "1")  # still an ordinary Headers
    assert out.getRawHeaders(b"X-More") == [b"1"]


def _relayed_the_old_way(target: Headers, upstream: Headers, length):
    """The reverse proxy's response-header copy before relay_response_headers
    (the oracle): filter, remove Server, setRawHeaders / addRawHeader per name."""
    filtered = filter_response_headers(upstream)
    target.removeHeader(b"server")
    for name, values in filtered.getAllRawHeaders():
        if name.lower() == b"set-cookie":
            for v in values:
                target.addRawHeader(name, v)
        else:
            target.setRawHeaders(name, values)
    if length is not None:
        target.setRawHeaders(b"content-length", [b"%d" % length])


def test_relay_response_headers_equals_the_header_by_header_copy():
    import random

    from nbgateway.proxy.headers import relay_response_headers

    rng = random.Random(20)
    names = ["Content-Type", "content-length", "Server", "Date", "Set-Cookie", "set-cookie",
             "Connection", "Keep-Alive", "Transfer-Encoding", "X-Drop", "ETag", "WWW-Authenticate",
             "Location", "Cache-Control", "Upgrade", "Trailer", "x-custom", "Vary"]
    for _ in range(500):
        upstream = Headers()
        for _ in range(rng.randrange(0, 12)):
            name = rng.choice(names)
            if name.lower() == "connection":
                value = rng.choice(["close", "keep-alive", "close, X-Drop", "x-custom, etag"])
            else:
                value = rng.choice(["1", "a=b; Path=/", "text/html", "nginx", "v v"])
            upstream.addRawHeader(name, value)
        def client() -> Headers:
            h = Headers()
            if rng.random() < 0.3:
                h.setRawHeaders(b"connection", [b"close"])
            h.setRawHeaders(b"server", [b"TwistedWeb"])
            h.setRawHeaders(b"date", [b"Sun, 06 Dec 2026 08:00:00 GMT"])
            if rng.random() < 0.5:
                h.addRawHeader(b"set-cookie", b"nb_session=T; Path=/")
            return h
        state = rng.getstate()
        got = client()
        rng.setstate(state)
        want = client()
        length = rng.choice([None, 0, 512])
        relay_response_headers(got, upstream, length)
        _relayed_the_old_way(want, upstream, length)
        assert list(got.getAllRawHeaders()) == list(want.getAllRawHeaders()), upstream
        # the upstream Headers is left as it was, and the copies are not shared
        for _name, values in got.getAllRawHeaders():
            assert all(values is not v for _, v in upstream.getAllRawHeaders())


def test_relay_of_an_owned_upstream_moves_its_lists_with_the_same_result():
    """``owned`` (the lean client's headers, made for one response): the same
    client headers as the header-by-header copy, the copied value lists
    moved (not copied), Set-Cookie values still appended to the client's."""
    import random

    from nbgateway.proxy.headers import relay_response_headers

    rng = random.Random(21)
    names = ["Content-Type", "content-length", "Server", "Date", "Set-Cookie", "Connection",
             "Keep-Alive", "X-Drop", "ETag", "Location", "Vary", "Transfer-Encoding"]
    for _ in range(300):
        pairs = []
        for _ in range(rng.randrange(0, 10)):
            name = rng.choice(names)
            value = (rng.choice(["close", "close, X-Drop", "x-drop, etag"])
                     if name == "Connection" else rng.choice(["1", "a=b", "text/html", "v v"]))
            pairs.append((name, value))
        upstream, oracle = Headers(), Headers()
        for name, value in pairs:
            upstream.addRawHeader(name, value)
            oracle.addRawHeader(name, value)
        lists = {name: values for name, values in upstream.getAllRawHeaders()}
        got, want = Headers(), Headers()
        for h in (got, want):
            h.setRawHeaders(b"server", [b"TwistedWeb"])
            h.addRawHeader(b"set-cookie", b"nb_session=T; Path=/")
        length = rng.choice([None, 512])
        relay_response_headers(got, upstream, length, True)
        _relayed_the_old_way(want, oracle, length)
        assert list(got.getAllRawHeaders()) == list(want.getAllRawHeaders()), pairs
        for name, values in got.getAllRawHeaders():
            if name in lists and name not in (b"Set-Cookie", b"Content-Length"):
                assert values is lists[name]  # moved
        assert got.getRawHeaders(b"set-cookie")[0] == b"nb_session=T; Path=/"


def test_long_client_host_values_are_prepared_but_never_cached():
    from nbgateway.proxy import headers as hm

    host = "app.example:" + "1" * 400
    kw = dict(host_header=host, target_netloc="backend:8080", pass_host_header=True,
              client_ip="100.64.0.10", over_tls=False)
    before = (hm._forwarding.cache_info().currsize, hm._clean_cached.cache_info().currsize)
    got = prepare_upstream_headers(Headers({b"Accept": [b"*/*"]}), **kw)
    assert list(got.getAllRawHeaders()) == list(_reference(Headers({b"Accept": [b"*/*"]}),
                                                           **kw).getAllRawHeaders())
    assert got.getRawHeaders(b"host") == [host.encode()]
    assert (hm._forwarding.cache_info().currsize,
            hm._clean_cached.cache_info().currsize) == before
