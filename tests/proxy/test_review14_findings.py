"""sec14's failing tests (findings, not committed): each shows a bug on main.

F1  duplicate ``nb_session`` cookies: the gateway reads only the LAST one
    (twisted's getCookie), so a cookie tossed from a sibling tenant's
    subdomain (``Domain=<shared parent>``) shadows the victim's valid one.
F2  a session cookie minted by a scheme the service no longer offers (PIN
    removed, OIDC with groups now required) still admits its holder.
F3  the guess limiter keys IPv6 clients by /128: one /64 gives unlimited
    PIN/password guesses (each address fails once, never locked).

Run: copy into tests/proxy/ and run .venv/bin/pytest on it (it imports tests.http fakes)
"""

from __future__ import annotations

import jwt
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest
from twisted.web import server
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from nbgateway.auth.policy import CallAuthenticate, CallOIDCURL, Forward, Protect, RequestFacts
from nbgateway.auth.ratelimit import AttemptLimiter
from nbgateway.auth.session import SessionVerifier
from nbgateway.dial.direct import DirectDialer
from nbgateway.dial.pool import UpstreamPools
from nbgateway.http.site import GatewayResource
from nbgateway.management import sessionjwt
from nbgateway.management.store._secrets import generate_session_keys
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.service import entry_from_mapping
from tests.http.test_public_auth import PRIV as TPRIV
from tests.http.test_public_auth import Mgmt, Upstream, mapping

PRIV, PUB = generate_session_keys()
NOW = 1_800_000_000.0


def facts(**kw):
    base = dict(host="b.shared.example", uri="/", tls=True, overlay=False, now=NOW,
                account_id="victim", service_id="svc-b", schemes=("pin",), header_names=(),
                session_key=PUB, max_age=86400)
    base.update(kw)
    return RequestFacts(**base)


# -- F1 -------------------------------------------------------------------------------

class TossedCookieTests(unittest.TestCase):
    """Over loopback TCP through GatewayResource (test_public_auth's fakes)."""

    def setUp(self):
        self.upstream = Upstream()
        self.up_port = reactor.listenTCP(0, server.Site(self.upstream), interface="127.0.0.1")
        port = self.up_port.getHost().port
        self.entries = {m.domain: entry_from_mapping(m) for m in (
            mapping(port, "b.shared.example", pin=True),)}
        self.pools = UpstreamPools(reactor)
        self.proxy = ReverseProxy(reactor, self.pools, lambda acct, direct: DirectDialer(reactor))
        self.resource = GatewayResource(lookup=self.entries.get, proxy=self.proxy, gate=None,
                                        auth_client=Mgmt())
        self.port = reactor.listenTCP(0, ProxySite(self.resource), interface="127.0.0.1")

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.port.stopListening()
        yield self.pools.close_account("acct")
        yield self.up_port.stopListening()

    @defer.inlineCallbacks
    def test_f1_a_tossed_cookie_does_not_shadow_the_valid_session(self):
        good = sessionjwt.sign_session(TPRIV, subject="pin-user", domain="b.shared.example",
                                       method="pin")
        # the browser sends the host-only cookie (older) first, then the one a
        # sibling tenant's page set with Domain=shared.example; Path=/ (newer)
        h = Headers({b"host": [b"b.shared.example"], b"connection": [b"close"],
                     b"cookie": [f"nb_session={good}; nb_session=tossed".encode()]})
        url = f"http://127.0.0.1:{self.port.getHost().port}/".encode()
        resp = yield Agent(reactor).request(b"GET", url, h)
        yield readBody(resp)
        self.assertEqual(resp.code, 200)  # main: 401, the victim is logged out


# -- F2 -------------------------------------------------------------------------------

def test_f2_cookie_of_a_removed_scheme_no_longer_admits():
    pin_cookie = sessionjwt.sign_session(PRIV, subject="pin-user", domain="b.shared.example",
                                         method="pin", now=NOW)
    # the operator replaced the shared PIN by SSO (with distribution groups)
    step = Protect(facts(schemes=("oidc",), cookies=(pin_cookie,)), SessionVerifier()).start()
    assert isinstance(step, CallOIDCURL), step  # main: Forward as pin-user


def test_f2_header_cookie_after_header_auth_removed():
    hdr_cookie = sessionjwt.sign_session(PRIV, subject="header-user",
                                         domain="b.shared.example", method="header", now=NOW)
    step = Protect(facts(schemes=("password",), cookies=(hdr_cookie,)), SessionVerifier()).start()
    assert not isinstance(step, Forward), step


def test_f2_cookies_of_offered_or_unknown_methods_still_admit():
    """The check holds known ways in to the current schemes only: a PIN
    cookie on a password service (both shared secrets), an ``oidc`` cookie
    on an SSO service, and a session whose method this gateway does not know
    (another management's spelling; the signature vouches for it) admit."""
    for method, schemes in (("pin", ("password",)), ("password", ("pin",)),
                            ("oidc", ("oidc",)), ("", ("pin",)), ("sso-v2", ("pin",))):
        if method in sessionjwt.METHODS:
            cookie = sessionjwt.sign_session(PRIV, subject="someone",
                                             domain="b.shared.example", method=method, now=NOW)
        else:  # claims as sign_session's, with a method it would not mint
            claims = {"iss": sessionjwt.ISSUER, "sub": "someone", "aud": ["b.shared.example"],
                      "exp": int(NOW) + 3600, "nbf": int(NOW), "iat": int(NOW),
                      "method": method}
            cookie = jwt.encode(claims, sessionjwt.load_private_key(PRIV), algorithm="EdDSA",
                                headers={"typ": "JWT"})
        step = Protect(facts(schemes=schemes, cookies=(cookie,)), SessionVerifier()).start()
        assert isinstance(step, Forward), (method, schemes, step)


# -- F3 -------------------------------------------------------------------------------

def test_f3_one_ipv6_64_cannot_guess_without_bound():
    limiter = AttemptLimiter()
    reached = 0
    for i in range(2000):
        ip = f"2001:db8:1:2::{i + 1:x}"
        step = Protect(facts(form={"pin": f"{i:04d}"}, client_ip=ip), SessionVerifier(),
                       limiter).start()
        if isinstance(step, CallAuthenticate):
            reached += 1
            Protect.authenticate_done  # noqa: B018 (the adapter feeds the answer back)
            limiter.failed("svc-b", ip, NOW + i * 0.01)
    # main: all 2000 guesses reach Authenticate (and management's argon2id)
    assert reached <= 200, reached


# -- F4 -------------------------------------------------------------------------------

def test_f4_cloud_metadata_outside_link_local_is_not_opened_by_a_catch_all():
    import ipaddress

    from nbgateway.dial.guard import DialPolicy, parse_allow_list

    catch_all = DialPolicy(parse_allow_list("0.0.0.0/0,::/0"))
    # AWS's IPv6 instance metadata endpoint (a ULA) and Alibaba Cloud's
    # metadata address (in 100.64.0.0/10): main allows both
    for address in ("fd00:ec2::254", "100.100.100.200", "::ffff:100.100.100.200"):
        decision = catch_all.check("tenant", ipaddress.ip_address(address), 80)
        assert not decision.allowed, (address, decision)
    # an entry inside opens it (for its account), as for link-local
    scoped = DialPolicy(parse_allow_list("fd00:ec2::254@infra"))
    assert scoped.check("infra", ipaddress.ip_address("fd00:ec2::254"), 80).allowed


# -- F5 -------------------------------------------------------------------------------

class _Log:
    def __init__(self):
        self.entries = []

    def log(self, entry):
        self.entries.append(entry)


class UnloggedPathTests(unittest.TestCase):
    """/__netbird__/ paths are proxied to the tenant's upstream like any other
    (the gateway serves nothing there) but never reach the access log: a
    client hides requests from the service's audit trail, and with dot
    segments any path of the upstream (``/__netbird__/../admin``)."""

    def setUp(self):
        self.upstream = Upstream()
        self.up_port = reactor.listenTCP(0, server.Site(self.upstream), interface="127.0.0.1")
        port = self.up_port.getHost().port
        self.entries = {m.domain: entry_from_mapping(m) for m in (
            mapping(port, "open.example"),)}
        self.pools = UpstreamPools(reactor)
        self.proxy = ReverseProxy(reactor, self.pools, lambda acct, direct: DirectDialer(reactor))
        self.log = _Log()
        self.resource = GatewayResource(lookup=self.entries.get, proxy=self.proxy, gate=None,
                                        access_log=self.log)
        self.port = reactor.listenTCP(0, ProxySite(self.resource), interface="127.0.0.1")

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.port.stopListening()
        yield self.pools.close_account("acct")
        yield self.up_port.stopListening()

    @defer.inlineCallbacks
    def test_f5_every_proxied_request_is_logged(self):
        from twisted.internet import task

        for path in (b"/visible", b"/__netbird__/x", b"/__netbird__/../admin"):
            h = Headers({b"host": [b"open.example"], b"connection": [b"close"]})
            url = f"http://127.0.0.1:{self.port.getHost().port}".encode() + path
            resp = yield Agent(reactor).request(b"GET", url, h)
            yield readBody(resp)
            self.assertEqual(resp.code, 200)
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([r["uri"] for r in self.upstream.requests],
                         ["/visible", "/__netbird__/x", "/__netbird__/../admin"])
        # main: only /visible is logged
        self.assertEqual(len(self.log.entries), 3, [e.path for e in self.log.entries])


# -- F6 (low, not security: availability) ---------------------------------------------

import tests.proxy.test_review14_identity as _ident  # noqa: E402


class AuthorityAndHostTests(_ident.Http2IdentitySpoofTests):
    """An HTTP/2 request with ``:authority`` and an equal ``Host`` (RFC 9113
    8.3.1 allows it; proxies converting HTTP/1.1 send both) is 400
    ``duplicate Host``: both stream routes put :authority AND host into
    Host, and the front door refuses two values."""

    @defer.inlineCallbacks
    def test_f6_equal_authority_and_host_is_served(self):
        for host, extra in (("open.example", []),  # the lean route
                            ("pin.example", [("cookie", f"nb_session={self.cookie}")])):
            status = yield threads.deferToThread(
                _ident._h2_get, self.tls_port.getHost().port, self.store.ca.cert_path, host,
                [("host", host), *extra])
            self.assertEqual(status, 200, host)  # main: 400


AuthorityAndHostTests.test_http2_literal_forms_duplicates_and_underscores = None


# -- F7 -------------------------------------------------------------------------------

def test_f7_concurrent_guesses_from_one_address_are_bounded():
    """The limiter counts a failure when its Authenticate answer arrives, so
    guesses sent at once (HTTP/2 streams, parallel connections, GET ?pin=
    needs no form token) all pass the lock check: one address gets as many
    guesses per lockout as it can send concurrently, not five."""
    limiter = AttemptLimiter()
    protects = [Protect(facts(form={"pin": f"{i:04d}"}, client_ip="192.0.2.7"),
                        SessionVerifier(), limiter) for i in range(50)]
    steps = [p.start() for p in protects]
    calls = [p for p, s in zip(protects, steps, strict=True) if isinstance(s, CallAuthenticate)]
    for p in calls:
        p.authenticate_done(False, "", NOW + 1)
    assert len(calls) <= limiter.max_failures + 1, len(calls)  # main: 50


# -- F8 -------------------------------------------------------------------------------

from tests.management.test_sso import APP, world  # noqa: E402,F401 (the fixture)


def test_f8_forged_state_never_chooses_the_error_redirect(world):  # noqa: F811
    """The callback's IdP-error branch takes the redirect from the state
    without checking its HMAC: anyone can send a browser to
    /reverse-proxy/callback?error=x&state=<base64 of any URL whose Python
    hostname is an SSO service> and management answers 302 to it.  With a
    backslash, Python (urlsplit) and browsers (WHATWG) disagree on the host:
    https://evil.example\\@<service>/ is the service for the check and
    evil.example for the browser -- an open redirect on management's host."""
    import base64

    from nbgateway.management.sso import SSOError

    _store, _svc, _idp, sso = world
    target = f"https://evil.example\\@{APP}/"
    forged = base64.urlsafe_b64encode(target.encode()).rstrip(b"=").decode() + "|n|" + "0" * 64
    try:
        sso.callback({"error": "access_denied", "state": forged})
    except SSOError as exc:
        assert "evil.example" not in exc.redirect, exc.redirect  # main: redirects there


# -- F9 (low) -------------------------------------------------------------------------

class ConnectTests(_ident.Http2IdentitySpoofTests):
    """CONNECT is refused in authority form ("this is no forward proxy"), but
    an origin-form ``CONNECT / HTTP/1.1`` and HTTP/2's extended CONNECT
    (``:protocol``) are forwarded to the tenant's upstream as
    ``CONNECT / HTTP/1.1``; a plain HTTP/2 CONNECT (no ``:path``) raises an
    unhandled AttributeError in twisted.web (a traceback per stream, the
    connection dropped without an answer)."""

    @defer.inlineCallbacks
    def test_f9_connect_never_reaches_an_upstream_and_is_answered(self):
        out = yield self.send(b"CONNECT / HTTP/1.1\r\nHost: open.example\r\n"
                              b"Connection: close\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:80])  # main: 200
        for extra in ([(":protocol", "websocket")], []):
            status = yield threads.deferToThread(
                _connect_h2, self.tls_port.getHost().port, self.store.ca.cert_path, extra)
            self.assertIn(status, (400, 405), extra)  # main: 200 / connection dropped
        self.assertEqual(self.up_factory.heads, [])


ConnectTests.test_http2_literal_forms_duplicates_and_underscores = None


def _connect_h2(port, cafile, extra):
    import socket
    import ssl

    import h2.config
    import h2.connection
    import h2.events

    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="open.example") as tls:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        conn.initiate_connection()
        head = [(":method", "CONNECT"), (":authority", "open.example")]
        if extra:
            head += [(":scheme", "https"), (":path", "/"), *extra]
        conn.send_headers(1, head, end_stream=True)
        tls.sendall(conn.data_to_send())
        status = "no answer"
        while True:
            try:
                data = tls.recv(65536)
            except OSError:
                return status
            if not data:
                return status
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset
                                | h2.events.ConnectionTerminated):
                    return status
            tls.sendall(conn.data_to_send())
