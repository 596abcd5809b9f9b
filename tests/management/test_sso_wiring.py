"""SSO wiring: ``twistd nbmanagement --oidc-*`` options (client secret from a
file or the environment, never argv), the ``/reverse-proxy/callback`` mount
of the REST site and the callback resource's answers and rate limit."""

from __future__ import annotations

import pytest
from twisted.python import usage
from twisted.web.test.requesthelper import DummyRequest

from nbgateway.management.api import _Root
from nbgateway.management.sso import CALLBACK_BURST, CallbackResource, SSOError
from nbgateway.management.tap import Options


def parse(argv, environ=None):
    opts = Options(environ=environ or {})
    opts.parseOptions(argv)
    return opts


def test_oidc_options(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    opts = parse(["--oidc-issuer", "https://idp.example", "--oidc-client-id", "mgmt",
                  "--oidc-client-secret-file", str(secret), "--oidc-scopes",
                  "openid email groups", "--oidc-auto-groups", "staff, ops"])
    s = opts.sso_settings
    assert (s.issuer, s.client_id, s.client_secret) == ("https://idp.example", "mgmt",
                                                        "from-file")
    assert s.scopes == ("openid", "email", "groups")
    assert s.callback_url == "http://127.0.0.1:33071/reverse-proxy/callback" or \
        s.callback_url.endswith("/reverse-proxy/callback")
    env = {"NB_MANAGEMENT_OIDC_ISSUER": "https://idp.example",
           "NB_MANAGEMENT_OIDC_CLIENT_ID": "mgmt",
           "NB_MANAGEMENT_OIDC_CLIENT_SECRET": "from-env"}
    assert parse([], env).sso_settings.client_secret == "from-env"
    assert "from-env" not in repr(parse([], env).sso_settings)
    with pytest.raises(usage.UsageError, match="together"):
        parse(["--oidc-issuer", "https://idp.example"])
    with pytest.raises(usage.UsageError, match="openid"):
        parse(["--oidc-issuer", "https://idp.example", "--oidc-client-id", "c",
               "--oidc-scopes", "email"])
    assert getattr(parse([]), "sso_settings", None) is None


class _Pool:
    def callInThreadWithCallback(self, on_result, f, *a, **kw):
        try:
            on_result(True, f(*a, **kw))
        except Exception as exc:
            from twisted.python.failure import Failure

            on_result(False, Failure(exc))


class _Reactor:
    def __init__(self):
        self.now = 0.0

    def callFromThread(self, f, *a, **kw):
        f(*a, **kw)

    def seconds(self):
        return self.now


class _SSO:
    def __init__(self):
        self.queries = []

    def callback(self, query):
        self.queries.append(query)
        if query.get("state") == "good":
            return "https://app.example/?session_token=T"
        if query.get("state") == "denied":
            raise SSOError("nope", "https://app.example/?error=access_denied")
        raise SSOError("unknown sign-in")


def get(resource, path):
    req = DummyRequest([p.encode() for p in path.split("?")[0].strip("/").split("/")[1:]])
    req.uri = path.encode()
    resource.render_GET(req)
    return req


def test_callback_resource_answers_and_limits():
    sso, reactor = _SSO(), _Reactor()
    res = CallbackResource(sso, _Pool(), reactor)
    root = _Root(object(), object(), res)
    assert root.getChild(b"reverse-proxy", None) is res
    assert _Root(object(), object()).getChild(b"reverse-proxy", None) is not res
    ok = get(res, "/reverse-proxy/callback?code=c&state=good")
    assert ok.responseCode == 302
    assert ok.responseHeaders.getRawHeaders(b"location") == [
        b"https://app.example/?session_token=T"]
    denied = get(res, "/reverse-proxy/callback?state=denied")
    assert denied.responseCode == 302
    assert b"error=access_denied" in denied.responseHeaders.getRawHeaders(b"location")[0]
    assert get(res, "/reverse-proxy/callback?state=x").responseCode == 400
    assert get(res, "/reverse-proxy/other").responseCode == 404
    codes = [get(res, "/reverse-proxy/callback?state=good").responseCode
             for _ in range(CALLBACK_BURST)]
    assert codes.count(429) >= 1
    reactor.now += 60
    assert get(res, "/reverse-proxy/callback?state=good").responseCode == 302
