"""The sans-IO operator-auth order (auth/policy.py), the attempt limiter and
the CSRF form tokens, driven by hand with no reactor."""

from __future__ import annotations

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.csrf import FormTokens, same_site
from nbgateway.auth.policy import (
    CallAuthenticate,
    CallOIDCURL,
    CallTunnel,
    CallValidateSession,
    Forward,
    Protect,
    RequestFacts,
    Respond,
    safe_return_path,
)
from nbgateway.auth.ratelimit import AttemptLimiter
from nbgateway.auth.session import SessionVerifier
from nbgateway.management import sessionjwt
from nbgateway.management.store._secrets import generate_session_keys
from nbgateway.routes.identity import Identity

PRIV, PUB = generate_session_keys()
NOW = 1_800_000_000.0


def facts(**kw):
    base = dict(host="app.example", uri="/p?x=1", tls=True, overlay=False, now=NOW,
                account_id="a", service_id="s", schemes=("password",), header_names=(),
                session_key=PUB, max_age=86400)
    base.update(kw)
    return RequestFacts(**base)


def run(f, **kw):
    return Protect(f, SessionVerifier(), **kw)


def test_no_schemes_forwards_without_identity():
    assert run(facts(schemes=())).start() == Forward(None)


def test_oauth_error_is_denied_page_even_with_cookie():
    step = run(facts(query={"error": "x"})).start()
    assert (step.status, step.kind, step.message) == (
        403, "denied", "An error occurred during authentication")


def test_cookie_forwards_without_any_call():
    tok = sessionjwt.sign_session(PRIV, subject="pin-user", domain="app.example",
                                  method="pin", now=NOW)
    step = run(facts(cookies=(tok,))).start()
    assert isinstance(step, Forward) and step.identity.user_id == "pin-user"
    assert step.mechanism == "pin" and step.set_cookie == ""


def test_expired_cookie_is_ignored():
    tok = sessionjwt.sign_session(PRIV, subject="u", domain="app.example", method="pin",
                                  now=NOW - 86400)
    step = run(facts(cookies=(tok,))).start()
    assert step.kind == "login" and step.status == 401


def test_header_then_tunnel_then_scheme_loop_order():
    p = run(facts(header_names=("X-Key",), headers={"x-key": "v"}, overlay=True))
    assert p.start() == CallAuthenticate("header", "v", "X-Key")
    p = run(facts(header_names=("X-Key",), overlay=True))
    assert p.start() == CallTunnel()
    step = p.tunnel_done(False, None, "")
    assert step.kind == "login"
    assert step.methods == (("password", "password"), ("header", ""))


def test_tunnel_success_forwards_with_cookie():
    p = run(facts(overlay=True))
    p.start()
    ident = Identity("u", "e")
    assert p.tunnel_done(True, ident, "T") == Forward(ident, "oidc", "T")


def test_oidc_only_redirects_to_idp_and_needs_tls():
    p = run(facts(schemes=("oidc",)))
    assert p.start() == CallOIDCURL("https://app.example/p")
    assert p.oidc_url_done("https://idp/auth") == Respond(302, "redirect",
                                                          location="https://idp/auth")
    step = run(facts(schemes=("oidc",), tls=False)).start()
    assert (step.status, step.body) == (400, "OIDC requires TLS — use port 443")


def test_oidc_session_token_validated_then_303_without_it():
    p = run(facts(schemes=("oidc",), uri="/p?session_token=T&y=2",
                  query={"session_token": "T", "y": "2"}))
    assert p.start() == CallValidateSession("T")
    ok = pb.ValidateSessionResponse(valid=True, user_id="u", user_email="u@x",
                                    peer_group_ids=["g"], peer_group_names=["G"])
    step = p.validate_session_done(ok, "T")
    assert (step.status, step.location, step.set_cookie) == (303, "/p?y=2", "T")
    p = run(facts(schemes=("oidc",), query={"session_token": "T"}))
    p.start()
    denied = p.validate_session_done(pb.ValidateSessionResponse(valid=False), "T")
    assert (denied.status, denied.kind) == (403, "denied")
    assert p.validate_session_done(None, "T").status == 502


def test_password_failure_reprompts_and_rpc_error_is_502():
    p = run(facts(form={"password": "bad"}))
    assert p.start() == CallAuthenticate("password", "bad")
    step = p.authenticate_done(False, "")
    assert (step.status, step.kind, step.error) == (401, "login", "password")
    p = run(facts(form={"password": "x"}))
    p.start()
    assert p.authenticate_done(None, "").status == 502


def test_untrusted_form_post_is_refused_before_any_call():
    step = run(facts(form={"password": "x"}, form_trusted=False)).start()
    assert step.status == 403


def test_safe_return_path():
    assert safe_return_path("//evil/x?session_token=a&b=1") == "/evil/x?b=1"
    assert safe_return_path("/a\\b") == "/a/b"
    assert safe_return_path("/ok?password=p&pin=1") == "/ok"


def test_limiter_locks_one_address_and_never_a_clean_one():
    lim = AttemptLimiter(max_failures=2, window=100, lockout=10, service_failures=3)
    for _ in range(3):
        lim.failed("s", "1.1.1.1", 0)
    assert lim.retry_after("s", "1.1.1.1", 1) == 9
    assert lim.retry_after("s", "2.2.2.2", 1) == 0
    # the service budget is spent: an address that already failed locks early,
    lim.failed("s", "3.3.3.3", 2)
    lim.failed("s", "3.3.3.3", 2)
    assert lim.retry_after("s", "3.3.3.3", 3) > 0
    # but one that never failed is still heard
    assert lim.retry_after("s", "4.4.4.4", 3) == 0
    # lockouts double
    lim.failed("s", "1.1.1.1", 20)
    lim.failed("s", "1.1.1.1", 20)
    lim.failed("s", "1.1.1.1", 20)
    assert lim.retry_after("s", "1.1.1.1", 20) == 20


def test_form_tokens_and_same_site():
    t = FormTokens(b"x" * 32, ttl=100)
    tok = t.issue("h.example", 1000)
    assert t.check(tok, "h.example", 1050)
    assert not t.check(tok, "other.example", 1050)
    assert not t.check(tok, "h.example", 1200)
    assert not t.check("1000." + "0" * 64, "h.example", 1050)
    assert same_site({"origin": "https://h.example:8443"}, "h.example")
    assert not same_site({"origin": "https://evil.example"}, "h.example")
    assert not same_site({"sec-fetch-site": "cross-site"}, "h.example")
    assert same_site({}, "h.example")


def test_token_minted_during_the_rpc_verifies_at_answer_time():
    # the request arrived at NOW - 0.5; management minted at NOW (nbf = NOW)
    tok = sessionjwt.sign_session(PRIV, subject="header-user", domain="app.example",
                                  method="header", now=NOW)
    p = run(facts(now=NOW - 0.5, schemes=(), header_names=("X-Key",),
                  headers={"x-key": "v"}))
    p.start()
    step = p.authenticate_done(True, tok, NOW + 0.01)
    assert isinstance(step, Forward) and step.identity.user_id == "header-user"
    p = run(facts(now=NOW - 0.5, schemes=(), header_names=("X-Key",),
                  headers={"x-key": "v"}))
    p.start()
    assert p.authenticate_done(True, tok).status == 400  # the old clock would refuse it


def test_oidc_return_url_keeps_the_host_port():
    p = run(facts(schemes=("oidc",), port="8443"))
    assert p.start() == CallOIDCURL("https://app.example:8443/p")
    p = run(facts(schemes=("oidc",), port="x"))
    assert p.start() == CallOIDCURL("https://app.example/p")


def test_verified_tokens_are_cached_but_time_checks_still_apply():
    v = SessionVerifier()
    tok = sessionjwt.sign_session(PRIV, subject="u", domain="app.example", method="pin",
                                  now=NOW)
    assert v.verify(tok, PUB, "app.example", NOW).user_id == "u"
    assert v.verify(tok, PUB, "app.example", NOW + 1).user_id == "u"
    assert v.cache_hits == 1
    assert v.verify(tok, PUB, "app.example", NOW + 86400) is None  # expired, from the cache
    assert v.verify(tok, PUB, "other.example", NOW) is None  # another host is verified anew
    _, other_pub = generate_session_keys()
    assert v.verify(tok, other_pub, "app.example", NOW) is None
