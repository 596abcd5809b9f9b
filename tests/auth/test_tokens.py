"""Service tokens on the gateway (auth/tokens.py) and their place in the
operator-auth order (auth/policy.py): both presentations, wrong/unknown/
expired/malformed tokens 401 without any call, Bearer values that are not
service tokens left to the other schemes, credentials stripped before
forwarding."""

from __future__ import annotations

from twisted.web.http_headers import Headers

from nbgateway.auth import tokens
from nbgateway.auth.policy import CallAuthenticate, Forward, Protect, RequestFacts, Respond
from nbgateway.auth.session import SessionVerifier

NOW = 1_800_000_000.0
TID, SECRET = tokens.new_token()
OTHER_ID, OTHER_SECRET = tokens.new_token()
RECS = ((TID, "ci", tokens.digest(SECRET), 0),
        (OTHER_ID, "old", tokens.digest(OTHER_SECRET), int(NOW)))  # expired at NOW


def protect(headers, **kw):
    base = dict(host="app.example", uri="/", tls=True, overlay=False, now=NOW,
                account_id="a", service_id="s", schemes=(), header_names=(),
                session_key="", max_age=86400, headers=headers, tokens=RECS)
    base.update(kw)
    return Protect(RequestFacts(**base), SessionVerifier()).start()


def test_two_headers_forward_with_the_token_identity():
    step = protect({tokens.ID_HEADER: TID, tokens.SECRET_HEADER: SECRET})
    assert isinstance(step, Forward) and step.mechanism == "token"
    assert step.identity.user_id == f"token:{TID}" and step.set_cookie == ""


def test_bearer_forwards():
    step = protect({"authorization": f"Bearer {TID}.{SECRET}"})
    assert isinstance(step, Forward) and step.identity.user_id == f"token:{TID}"


def test_wrong_unknown_expired_malformed_are_401():
    bad = [
        {tokens.ID_HEADER: TID, tokens.SECRET_HEADER: OTHER_SECRET},
        {tokens.ID_HEADER: TID},
        {"authorization": f"Bearer {OTHER_ID}.{OTHER_SECRET}"},  # expired
        {"authorization": f"bearer nbt_{'0' * 24}.{SECRET}"},  # unknown id
        {tokens.ID_HEADER: TID + "x", tokens.SECRET_HEADER: SECRET},
        {tokens.ID_HEADER: TID, tokens.SECRET_HEADER: SECRET + "\x00"},
    ]
    for h in bad:
        step = protect(h)
        assert isinstance(step, Respond) and step.status == 401, h
        assert step.mechanism == "token" and "invalid service token" in step.body


def test_tokens_only_service_without_a_token_is_401():
    step = protect({})
    assert isinstance(step, Respond) and step.status == 401


def test_no_live_token_left_keeps_the_service_closed():
    # every token revoked: the mapping still says token_auth, never fail open
    for h in ({}, {tokens.ID_HEADER: TID, tokens.SECRET_HEADER: SECRET}):
        step = protect(h, tokens=(), token_auth=True)
        assert isinstance(step, Respond) and step.status == 401, h


def test_other_bearer_values_go_to_the_header_scheme():
    step = protect({"authorization": "Bearer eyJhbGciOi.x.y"},
                   header_names=("Authorization",))
    assert isinstance(step, CallAuthenticate) and step.scheme == "header"


def test_no_tokens_configured_ignores_token_headers():
    step = protect({tokens.ID_HEADER: TID, tokens.SECRET_HEADER: SECRET}, tokens=(),
                   schemes=("pin",))
    assert isinstance(step, Respond) and step.kind == "login"


def test_strip_credentials():
    h = Headers({b"x-netbird-token-id": [TID.encode()], b"x-netbird-token-secret": [b"s"],
                 b"authorization": [f"Bearer {TID}.{SECRET}".encode()], b"accept": [b"*/*"]})
    tokens.strip_credentials(h)
    assert dict(h.getAllRawHeaders()) == {b"Accept": [b"*/*"]}
    h = Headers({b"authorization": [b"Basic dTpw"]})
    tokens.strip_credentials(h)
    assert h.hasHeader(b"authorization")  # not a service token: the upstream's business


def test_access_log_entry_names_the_token():
    from nbgateway.observe.accesslog import build_entry

    common = dict(now=NOW, log_id="l", account_id="a", service_id="s", host="h", path="/",
                  method="GET", duration_ms=1, source_ip="1.2.3.4", user_id=f"token:{TID}")
    ok = build_entry(response_code=200, auth_mechanism="token", **common)
    assert ok.user_id == f"token:{TID}" and ok.auth_mechanism == "token"
    assert build_entry(response_code=200, auth_mechanism="pin", **common).user_id == ""


def test_session_issued_before_revocation_is_refused():
    from nbgateway.auth.policy import revoked_session
    from nbgateway.management import sessionjwt
    from nbgateway.management.store._secrets import generate_session_keys

    priv, pub = generate_session_keys()
    tok = sessionjwt.sign_session(priv, subject="u1", domain="app.example", method="pin",
                                  now=NOW)
    kw = dict(schemes=("pin",), session_key=pub, cookies=(tok,), tokens=())
    assert isinstance(protect({}, **kw), Forward)
    assert isinstance(protect({}, sessions_not_before=int(NOW), **kw), Forward)
    step = protect({}, sessions_not_before=int(NOW) + 1, **kw)
    assert isinstance(step, Respond) and step.status == 401 and step.kind == "login"
    assert revoked_session("not.a-jwt", 1) and not revoked_session("x", 0)
