"""Operator auth on the public listener, over real loopback TCP: a
GatewayResource (no listener account) in front of a real upstream, with a
fake management that mints real Ed25519 session JWTs.  Header auth, the
password/PIN login page and form, cookies (including forged ones), the OAuth
error page, CSRF, open redirects, oversized forms and management failures."""

from __future__ import annotations

import json
import time
from io import BytesIO
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.csrf import FormTokens
from nbgateway.dial.direct import DirectDialer
from nbgateway.dial.pool import UpstreamPools
from nbgateway.errors import ManagementUnavailableError
from nbgateway.http.site import GatewayResource
from nbgateway.management import sessionjwt
from nbgateway.management.store._secrets import generate_session_keys
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.service import entry_from_mapping

PRIV, PUB = generate_session_keys()
OTHER_PRIV, OTHER_PUB = generate_session_keys()


class Upstream(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []

    def render(self, request):
        headers = {k.decode().lower(): [v.decode() for v in vs]
                   for k, vs in request.requestHeaders.getAllRawHeaders()}
        self.requests.append({"uri": request.uri.decode(), "headers": headers,
                              "body": request.content.read().decode("latin-1")})
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"path": request.uri.decode()}).encode()


class Mgmt:
    """Authenticate with fixed secrets; real tokens; can be 'down'."""

    def __init__(self):
        self.calls = []
        self.down = False
        self.secrets = {"password": "hunter2", "pin": "1234", "header": "s3cret"}
        self.bad_token = False

    def authenticate(self, service_id, account_id, **kw):
        self.ip = kw.pop("client_ip", None)
        self.calls.append(("authenticate", service_id, kw))
        if self.down:
            return defer.fail(ManagementUnavailableError("down"))
        scheme = "header" if "header_value" in kw else next(iter(kw))
        value = kw.get("header_value", kw.get(scheme))
        if value != self.secrets[scheme]:
            return defer.succeed(pb.AuthenticateResponse(success=False))
        domain = service_id.removeprefix("svc-")
        key = OTHER_PRIV if self.bad_token else PRIV
        token = sessionjwt.sign_session(key, subject=f"{scheme}-user", domain=domain,
                                        method=scheme)
        return defer.succeed(pb.AuthenticateResponse(success=True, session_token=token))

    def send_access_log(self, entry):
        return defer.succeed(None)


def mapping(port, domain, **auth):
    return pb.ProxyMapping(
        id=f"svc-{domain}", account_id="acct", domain=domain,
        path=[pb.PathMapping(path="/", target=f"http://127.0.0.1:{port}/",
                             options=pb.PathTargetOptions(direct_upstream=True))],
        auth=pb.Authentication(session_key=PUB, max_session_age_seconds=3600, **auth))


class PublicAuthTests(unittest.TestCase):
    def setUp(self):
        self.upstream = Upstream()
        self.up_port = reactor.listenTCP(0, server.Site(self.upstream), interface="127.0.0.1")
        port = self.up_port.getHost().port
        self.mgmt = Mgmt()
        self.entries = {m.domain: entry_from_mapping(m) for m in (
            mapping(port, "hdr.example", header_auths=[pb.HeaderAuth(header="X-Api-Key")]),
            mapping(port, "pw.example", password=True, pin=True),
            mapping(port, "pw2.example", password=True),
            mapping(port, "sso.example", oidc=True),
        )}
        self.pools = UpstreamPools(reactor)
        self.proxy = ReverseProxy(reactor, self.pools, lambda acct, direct: DirectDialer(reactor))
        self.tokens = FormTokens(b"k" * 32)
        self.resource = GatewayResource(lookup=self.entries.get, proxy=self.proxy, gate=None,
                                        auth_client=self.mgmt, form_tokens=self.tokens)
        self.port = reactor.listenTCP(0, ProxySite(self.resource), interface="127.0.0.1")
        self.agent = Agent(reactor)

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.port.stopListening()
        yield self.pools.close_account("acct")
        yield self.up_port.stopListening()

    @defer.inlineCallbacks
    def req(self, host, path="/", headers=None, method=b"GET", body=None):
        h = Headers({b"host": [host.encode()], b"connection": [b"close"]})
        for k, v in (headers or {}).items():
            h.setRawHeaders(k.encode(), [v.encode()])
        producer = None
        if body is not None:
            producer = FileBodyProducer(BytesIO(body))
        url = f"http://127.0.0.1:{self.port.getHost().port}{path}".encode()
        resp = yield self.agent.request(method, url, h, producer)
        data = yield readBody(resp)
        return resp, data

    def cookie_of(self, resp):
        raw = resp.headers.getRawHeaders(b"set-cookie") or []
        self.assertEqual(len(raw), 1, raw)
        value = raw[0].decode()
        self.assertTrue(value.startswith("nb_session="))
        self.assertIn("; Path=/; Max-Age=3600; HttpOnly; Secure; SameSite=Lax", value)
        return value.split(";", 1)[0].split("=", 1)[1]

    def form(self, **fields):
        return {"content-type": "application/x-www-form-urlencoded",
                "origin": "https://pw.example"}, urlencode(fields).encode()

    # -- header auth --------------------------------------------------------
    @defer.inlineCallbacks
    def test_header_right_value_forwards_sets_cookie_and_strips_credential(self):
        resp, _ = yield self.req("hdr.example", "/x", {"X-Api-Key": "s3cret"})
        self.assertEqual(resp.code, 200)
        token = self.cookie_of(resp)
        self.assertEqual(len(self.upstream.requests), 1)
        up = self.upstream.requests[0]["headers"]
        self.assertNotIn("x-api-key", up)
        self.assertEqual(up["x-netbird-user"], ["header-user"])
        # the cookie alone is enough, with no RPC, and is not forwarded
        calls = len(self.mgmt.calls)
        resp, _ = yield self.req("hdr.example", "/y", {"Cookie": f"nb_session={token}; a=b"})
        self.assertEqual(resp.code, 200)
        self.assertEqual(len(self.mgmt.calls), calls)
        self.assertEqual(self.upstream.requests[1]["headers"]["cookie"], ["a=b"])

    @defer.inlineCallbacks
    def test_header_wrong_value_401(self):
        resp, body = yield self.req("hdr.example", "/", {"X-Api-Key": "nope"})
        self.assertEqual((resp.code, body), (401, b"Unauthorized\n"))
        self.assertEqual(self.upstream.requests, [])

    @defer.inlineCallbacks
    def test_header_management_down_502(self):
        self.mgmt.down = True
        resp, body = yield self.req("hdr.example", "/", {"X-Api-Key": "s3cret"})
        self.assertEqual((resp.code, body), (502, b"authentication service unavailable\n"))

    @defer.inlineCallbacks
    def test_header_token_that_does_not_verify_is_400(self):
        self.mgmt.bad_token = True
        resp, body = yield self.req("hdr.example", "/", {"X-Api-Key": "s3cret"})
        self.assertEqual((resp.code, body), (400, b"invalid session token\n"))

    @defer.inlineCallbacks
    def test_header_absent_is_login_page_401(self):
        resp, body = yield self.req("hdr.example", "/")
        self.assertEqual(resp.code, 401)
        self.assertIn(b"credential header", body)

    # -- login page, password / PIN -----------------------------------------
    @defer.inlineCallbacks
    def test_login_page_is_self_contained_with_strict_csp(self):
        resp, body = yield self.req("pw.example", "/app?q=1")
        self.assertEqual(resp.code, 401)
        csp = resp.headers.getRawHeaders(b"content-security-policy")[0].decode()
        self.assertIn("default-src 'none'", csp)
        self.assertIn("form-action 'self'", csp)
        self.assertNotIn(b"<script", body)
        self.assertNotIn(b"http://", body)
        self.assertNotIn(b"https://", body)
        self.assertIn(b'name="password"', body)
        self.assertIn(b'name="pin"', body)
        self.assertIn(b'action="/app?q=1"', body)
        self.assertIn(b'name="nb_csrf"', body)
        self.assertEqual(self.mgmt.calls, [])

    @defer.inlineCallbacks
    def test_wrong_password_401_with_error_right_one_303_then_cookie(self):
        tok = self.tokens.issue("pw.example", time.time())
        headers, body = self.form(password="wrong", nb_csrf=tok)
        resp, page = yield self.req("pw.example", "/app?q=1", headers, b"POST", body)
        self.assertEqual(resp.code, 401)
        self.assertIn(b"Wrong password", page)
        headers, body = self.form(password="hunter2", nb_csrf=tok)
        resp, _ = yield self.req("pw.example", "/app?q=1&session_token=zz", headers, b"POST",
                                 body)
        self.assertEqual(resp.code, 303)
        self.assertEqual(resp.headers.getRawHeaders(b"location"), [b"/app?q=1"])
        token = self.cookie_of(resp)
        self.assertEqual(self.upstream.requests, [])
        resp, _ = yield self.req("pw.example", "/app?q=1", {"Cookie": f"nb_session={token}"})
        self.assertEqual(resp.code, 200)
        self.assertEqual(self.upstream.requests[0]["headers"]["x-netbird-user"],
                         ["password-user"])
        # the same cookie on another service (another audience) still asks
        resp, _ = yield self.req("pw2.example", "/", {"Cookie": f"nb_session={token}"})
        self.assertEqual(resp.code, 401)

    @defer.inlineCallbacks
    def test_pin_success(self):
        tok = self.tokens.issue("pw.example", time.time())
        headers, body = self.form(pin="1234", nb_csrf=tok)
        resp, _ = yield self.req("pw.example", "/", headers, b"POST", body)
        self.assertEqual(resp.code, 303)
        self.assertEqual(self.mgmt.calls[-1][2], {"pin": "1234"})
        self.assertEqual(self.mgmt.ip, "127.0.0.1")  # the end user's address, for management

    @defer.inlineCallbacks
    def test_cross_site_post_refused_without_rpc(self):
        tok = self.tokens.issue("pw.example", time.time())
        _, body = self.form(password="hunter2", nb_csrf=tok)
        for headers in (
            {"content-type": "application/x-www-form-urlencoded", "origin": "https://evil.example"},
            {"content-type": "application/x-www-form-urlencoded", "origin": "null"},
            {"content-type": "application/x-www-form-urlencoded",
             "sec-fetch-site": "cross-site"},
            {"content-type": "application/x-www-form-urlencoded",
             "referer": "https://evil.example/x"},
        ):
            resp, _ = yield self.req("pw.example", "/", headers, b"POST", body)
            self.assertEqual(resp.code, 403, headers)
        # a missing or foreign-host form token
        headers, body = self.form(password="hunter2")
        resp, _ = yield self.req("pw.example", "/", headers, b"POST", body)
        self.assertEqual(resp.code, 403)
        headers, body = self.form(password="hunter2",
                                  nb_csrf=self.tokens.issue("pw2.example", time.time()))
        resp, _ = yield self.req("pw.example", "/", headers, b"POST", body)
        self.assertEqual(resp.code, 403)
        self.assertEqual(self.mgmt.calls, [])

    @defer.inlineCallbacks
    def test_open_redirect_attempts_stay_on_host(self):
        tok = self.tokens.issue("pw.example", time.time())
        headers, body = self.form(password="hunter2", nb_csrf=tok)
        for path, want in (("//evil.example/x", b"/evil.example/x"),
                           ("///evil.example", b"/evil.example"),
                           ("/\\evil.example", b"/evil.example")):
            resp, _ = yield self.req("pw.example", path, headers, b"POST", body)
            self.assertEqual(resp.code, 303, path)
            self.assertEqual(resp.headers.getRawHeaders(b"location"), [want])

    @defer.inlineCallbacks
    def test_oversized_form_body_413_without_rpc(self):
        tok = self.tokens.issue("pw.example", time.time())
        headers, body = self.form(password="x" * 70000, nb_csrf=tok)
        resp, _ = yield self.req("pw.example", "/", headers, b"POST", body)
        self.assertEqual(resp.code, 413)
        self.assertEqual(self.mgmt.calls, [])

    @defer.inlineCallbacks
    def test_password_management_down_502_page_for_browsers(self):
        self.mgmt.down = True
        tok = self.tokens.issue("pw.example", time.time())
        headers, body = self.form(password="hunter2", nb_csrf=tok)
        headers["accept"] = "text/html"
        resp, page = yield self.req("pw.example", "/", headers, b"POST", body)
        self.assertEqual(resp.code, 502)
        self.assertIn(b"unavailable", page)

    # -- cookies -------------------------------------------------------------
    @defer.inlineCallbacks
    def test_forged_cookies_are_ignored(self):
        now = int(time.time())
        claims = {"iss": "netbird-management", "sub": "mallory", "aud": ["pw.example"],
                  "exp": now + 600, "nbf": now - 10, "iat": now - 10, "method": "password"}
        pub_pem = sessionjwt.load_public_key(PUB).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        forged = [
            jwt.encode(claims, None, algorithm="none"),
            _hs256(claims, pub_pem),
            _hs256(claims, PUB.encode()),
            sessionjwt.sign_session(PRIV, subject="m", domain="pw2.example", method="pin"),
            sessionjwt.sign_session(PRIV, subject="m", domain="pw.example", method="pin",
                                    now=now - 90000),
            sessionjwt.sign_session(OTHER_PRIV, subject="m", domain="pw.example", method="pin"),
            jwt.encode({**claims, "iss": "evil"}, sessionjwt.load_private_key(PRIV),
                       algorithm="EdDSA"),
            jwt.encode({**claims, "sub": ""}, sessionjwt.load_private_key(PRIV),
                       algorithm="EdDSA"),
            "garbage", "a.b.c",
        ]
        for token in forged:
            resp, _ = yield self.req("pw.example", "/", {"Cookie": f"nb_session={token}"})
            self.assertEqual(resp.code, 401, token)
        self.assertEqual(self.upstream.requests, [])
        good = jwt.encode(claims, sessionjwt.load_private_key(PRIV), algorithm="EdDSA")
        resp, _ = yield self.req("pw.example", "/", {"Cookie": f"nb_session={good}"})
        self.assertEqual(resp.code, 200)

    # -- OIDC rules ----------------------------------------------------------
    @defer.inlineCallbacks
    def test_oauth_error_description_is_escaped_on_denied_page(self):
        q = urlencode({"error": "access_denied",
                       "error_description": "<script>alert(1)</script>"})
        resp, body = yield self.req("pw.example", f"/?{q}")
        self.assertEqual(resp.code, 403)
        self.assertIn(b"Access Denied", body)
        self.assertNotIn(b"<script>", body)
        self.assertIn(b"&lt;script&gt;alert(1)&lt;/script&gt;", body)

    @defer.inlineCallbacks
    def test_oidc_over_plain_http_is_400(self):
        resp, body = yield self.req("sso.example", "/")
        self.assertEqual(resp.code, 400)
        self.assertEqual(body.decode(), "OIDC requires TLS — use port 443\n")


def _hs256(claims, secret: bytes) -> str:
    """An HS256 token keyed with public material (PyJWT refuses PEM keys as
    HMAC secrets, so it is assembled by hand)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


class BruteForceTests(PublicAuthTests):
    """PIN guessing from one address locks that address out (429, no RPC);
    the legitimate user at another address still signs in (only the two
    tests below run here, not the inherited ones)."""

    @defer.inlineCallbacks
    def test_pin_brute_force_locks_one_address_only(self):
        tok = self.tokens.issue("pw.example", time.time())
        headers, _ = self.form()
        for guess in range(5):
            body = urlencode({"pin": f"{guess:04d}0", "nb_csrf": tok}).encode()
            resp, _ = yield self.req("pw.example", "/", headers, b"POST", body)
            self.assertEqual(resp.code, 401)
        body = urlencode({"pin": "99999", "nb_csrf": tok}).encode()
        resp, _ = yield self.req("pw.example", "/", headers, b"POST", body)
        self.assertEqual(resp.code, 401)  # the sixth failure locks
        rpcs = len(self.mgmt.calls)
        body = urlencode({"pin": "1234", "nb_csrf": tok}).encode()
        resp, page = yield self.req("pw.example", "/", headers, b"POST", body)
        self.assertEqual(resp.code, 429)
        self.assertIn(b"Too many failed attempts", page)
        self.assertTrue(int(resp.headers.getRawHeaders(b"retry-after")[0]) > 0)
        self.assertEqual(len(self.mgmt.calls), rpcs)  # refused without an RPC
        # the legitimate user from another address is unaffected
        self.agent = Agent(reactor, bindAddress=("127.0.0.2", 0))
        resp, _ = yield self.req("pw.example", "/", headers, b"POST", body)
        self.assertEqual(resp.code, 303)

    @defer.inlineCallbacks
    def test_header_guessing_is_limited_too(self):
        for _ in range(6):
            resp, _ = yield self.req("hdr.example", "/", {"X-Api-Key": "guess"})
            self.assertEqual(resp.code, 401)
        resp, body = yield self.req("hdr.example", "/", {"X-Api-Key": "s3cret"})
        self.assertEqual((resp.code, body), (429, b"Too Many Requests\n"))


for _name in [n for n in dir(PublicAuthTests) if n.startswith("test_")]:
    setattr(BruteForceTests, _name, None)
