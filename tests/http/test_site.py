"""The front resource end to end over two in-memory netstacks: a client at
tunnel IP 100.64.0.10 talks HTTP through the tunnel to the gateway's inbound
listener, which applies the private gate and proxies to a real upstream on
127.0.0.1 (direct_upstream).  Each test names the behaviour it checks."""

from __future__ import annotations

import json

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.tunnel import PrivateGate, TunnelValidationCache
from nbgateway.dial.direct import DirectDialer
from nbgateway.dial.pool import UpstreamPools
from nbgateway.http.site import GatewayResource
from nbgateway.netstack.endpoints import TunnelAgentEndpointFactory, TunnelServerEndpoint
from nbgateway.netstack.testing import make_stack_pair
from nbgateway.observe.accesslog import AccessLogger
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.service import entry_from_mapping

PEER_IP = "100.64.0.10"


class Upstream(resource.Resource):
    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []

    def render(self, request):
        headers = {k.decode().lower(): [v.decode() for v in vs]
                   for k, vs in request.requestHeaders.getAllRawHeaders()}
        self.requests.append(headers)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"path": request.uri.decode(), "headers": headers}).encode()


class Mgmt:
    def __init__(self):
        self.calls = []
        self.answer = pb.ValidateTunnelPeerResponse(
            valid=True, user_id="u1", user_email="alice@example.com", session_token="TOKEN",
            peer_group_ids=["g1", "g2"], peer_group_names=["eng", ""])
        self.logs = []

    def validate_tunnel_peer(self, tunnel_ip, domain, account_id=""):
        self.calls.append((tunnel_ip, domain))
        return defer.succeed(self.answer)

    def send_access_log(self, entry):
        self.logs.append(entry)
        return defer.succeed(None)


def mapping(port, *, domain="app.example", account="acct", private=True, **kw):
    return pb.ProxyMapping(
        id=f"svc-{domain}", account_id=account, domain=domain, private=private,
        path=[pb.PathMapping(path="/", target=f"http://127.0.0.1:{port}/",
                             options=pb.PathTargetOptions(direct_upstream=True))], **kw)


class SiteOverTunnelTests(unittest.TestCase):
    def setUp(self):
        self.upstream = Upstream()
        self.up_port = reactor.listenTCP(0, server.Site(self.upstream), interface="127.0.0.1")
        port = self.up_port.getHost().port
        self.mgmt = Mgmt()
        self.entries = {m.domain: entry_from_mapping(m) for m in (
            mapping(port),
            mapping(port, domain="public.example", private=False),
            mapping(port, domain="other.example", account="other"),
            mapping(port, domain="narrow.example", access_restrictions=pb.AccessRestrictions(
                allowed_cidrs=["100.64.1.0/24"])),
        )}
        self.roster = {("acct", PEER_IP)}
        self.cache = TunnelValidationCache(self.mgmt, reactor)
        self.gate = PrivateGate(self.cache, lambda a, ip: (a, ip) in self.roster)
        self.pools = UpstreamPools(reactor)
        self.proxy = ReverseProxy(reactor, self.pools, lambda acct, direct: DirectDialer(reactor))
        self.access = AccessLogger(self.mgmt, reactor, linger=0)
        self.gw_stack, self.client_stack, self.link = make_stack_pair(
            reactor, ("100.64.0.1",), (PEER_IP,), latency=0.0, jitter=0.0)
        site = ProxySite(GatewayResource(lookup=self.entries.get, proxy=self.proxy,
                                         gate=self.gate, listener_account="acct",
                                         access_log=self.access))
        self.listening = None

        def listening(p):
            self.listening = p

        TunnelServerEndpoint(self.gw_stack, 80).listen(site).addCallback(listening)
        self.agent = Agent.usingEndpointFactory(
            reactor, TunnelAgentEndpointFactory(self.client_stack, timeout=5))

    @defer.inlineCallbacks
    def tearDown(self):
        if self.listening is not None:
            yield self.listening.stopListening()
        yield self.pools.close_account("acct")
        yield self.up_port.stopListening()
        self.gw_stack.close()
        self.client_stack.close()
        self.link.close()

    @defer.inlineCallbacks
    def get(self, host, path="/", headers=None):
        h = Headers({b"host": [host.encode()]})
        for k, v in (headers or {}).items():
            h.setRawHeaders(k, [v])
        # Connection: close keeps the test's client connections from lingering
        h.setRawHeaders(b"connection", [b"close"])
        resp = yield self.agent.request(b"GET", f"http://100.64.0.1{path}".encode(), h)
        body = yield readBody(resp)
        return resp, body

    @defer.inlineCallbacks
    def test_allowed_peer_reaches_upstream_with_identity_b22_b23_b42_b46(self):
        resp, body = yield self.get("app.example", "/hello?x=1",
                                    {b"X-NetBird-User": b"mallory", b"Cookie": b"nb_session=x"})
        self.assertEqual(resp.code, 200)
        seen = json.loads(body)
        self.assertEqual(seen["path"], "/hello?x=1")
        h = seen["headers"]
        self.assertEqual(h["x-netbird-user"], ["alice@example.com"])
        self.assertEqual(h["x-netbird-groups"], ["eng,g2"])
        self.assertEqual(h["x-forwarded-for"], [PEER_IP])
        self.assertNotIn("cookie", h)
        self.assertEqual(self.mgmt.calls, [(PEER_IP, "app.example")])
        self.assertEqual(resp.headers.getRawHeaders(b"set-cookie"),
                         [b"nb_session=TOKEN; Path=/; Max-Age=86400; HttpOnly; Secure; "
                          b"SameSite=Lax"])

    @defer.inlineCallbacks
    def _answer_after(self, change):
        """A private request whose ValidateTunnelPeer RPC answers (valid)
        only after ``change`` altered the domain's service."""
        from twisted.internet import task

        pending = defer.Deferred()
        self.mgmt.validate_tunnel_peer = lambda ip, domain, **_kw: pending
        d = self.get("app.example")
        for _ in range(200):  # until the request waits for the RPC
            if pending.callbacks:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(pending.callbacks)
        change()
        self.cache.evict_account("acct")
        pending.callback(self.mgmt.answer)  # valid: for whoever owns the domain now
        resp, _body = yield d
        return resp

    @defer.inlineCallbacks
    def test_an_answer_for_a_domain_handed_to_another_account_meanwhile_is_refused(self):
        """Management answers for the domain's owner at the time it is asked:
        after a hand-over, that is another account's peer at the same tunnel
        address (accounts' ranges overlap). The answer must not make this
        account's peer that user, nor reach the old upstream with a cookie."""
        port = self.up_port.getHost().port
        resp = yield self._answer_after(lambda: self.entries.__setitem__(
            "app.example", entry_from_mapping(mapping(port, account="other"))))
        self.assertIn(resp.code, (403, 404))
        self.assertEqual(self.upstream.requests, [])
        self.assertIsNone(resp.headers.getRawHeaders(b"set-cookie"))

    @defer.inlineCallbacks
    def test_an_answer_for_a_service_removed_meanwhile_is_refused(self):
        resp = yield self._answer_after(lambda: self.entries.pop("app.example"))
        self.assertIn(resp.code, (403, 404))
        self.assertEqual(self.upstream.requests, [])
        self.assertIsNone(resp.headers.getRawHeaders(b"set-cookie"))

    @defer.inlineCallbacks
    def test_an_answer_after_an_unrelated_change_is_still_served(self):
        port = self.up_port.getHost().port
        resp = yield self._answer_after(lambda: self.entries.__setitem__(
            "new.example", entry_from_mapping(mapping(port, domain="new.example"))))
        self.assertEqual(resp.code, 200)
        self.assertEqual(len(self.upstream.requests), 1)

    @defer.inlineCallbacks
    def test_operator_auth_tunnel_answer_after_a_hand_over_is_no_sign_in(self):
        """A public service with a password, reached over the tunnel: the
        tunnel-peer sign-in (ValidateTunnelPeer) that answers after the domain
        went to another account signs nobody in; the login page answers."""
        from nbgateway.management.store._secrets import generate_session_keys

        _priv, pub = generate_session_keys()
        port = self.up_port.getHost().port

        def login_mapping(account):
            return mapping(port, domain="app.example", account=account, private=False,
                           auth=pb.Authentication(session_key=pub, password=True))

        self.entries["app.example"] = entry_from_mapping(login_mapping("acct"))
        resp = yield self._answer_after(lambda: None)
        self.assertEqual(resp.code, 200)  # the control: signed in by the tunnel
        self.assertEqual(len(self.upstream.requests), 1)
        self.upstream.requests.clear()
        resp = yield self._answer_after(lambda: self.entries.__setitem__(
            "app.example", entry_from_mapping(login_mapping("other"))))
        self.assertNotEqual(resp.code, 200)
        self.assertEqual(self.upstream.requests, [])
        self.assertIsNone(resp.headers.getRawHeaders(b"set-cookie"))

    @defer.inlineCallbacks
    def test_repeat_requests_one_rpc_b33(self):
        for _ in range(20):
            resp, _ = yield self.get("app.example")
            self.assertEqual(resp.code, 200)
        self.assertEqual(len(self.mgmt.calls), 1)
        self.assertEqual(len(self.upstream.requests), 20)

    @defer.inlineCallbacks
    def test_denied_peer_gets_403_and_upstream_untouched_b24(self):
        self.mgmt.answer = pb.ValidateTunnelPeerResponse(valid=False, denied_reason="not_in_group")
        resp, body = yield self.get("app.example")
        self.assertEqual((resp.code, body), (403, b"Forbidden\n"))
        self.assertEqual(resp.headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"])
        self.assertEqual(self.upstream.requests, [])

    @defer.inlineCallbacks
    def test_peer_not_in_roster_403_without_rpc_b21(self):
        self.roster.clear()
        resp, _ = yield self.get("app.example")
        self.assertEqual(resp.code, 403)
        self.assertEqual(self.mgmt.calls, [])

    @defer.inlineCallbacks
    def test_unknown_host_404_b31(self):
        resp, body = yield self.get("nope.example")
        self.assertEqual(resp.code, 404)
        self.assertIn(b"Service Not Found", body)

    @defer.inlineCallbacks
    def test_other_accounts_domain_is_404_on_inbound_listener(self):
        resp, _ = yield self.get("other.example")
        self.assertEqual(resp.code, 404)
        self.assertEqual(self.mgmt.calls, [])

    @defer.inlineCallbacks
    def test_public_service_served_without_identity_but_spoof_stripped_b46(self):
        resp, body = yield self.get("public.example", headers={b"X-NetBird-Groups": b"admins"})
        self.assertEqual(resp.code, 200)
        self.assertNotIn("x-netbird-groups", json.loads(body)["headers"])
        self.assertEqual(self.mgmt.calls, [])

    @defer.inlineCallbacks
    def test_restriction_denies_before_gate_b49(self):
        resp, _ = yield self.get("narrow.example")
        self.assertEqual(resp.code, 403)
        self.assertEqual(self.mgmt.calls, [])

    @defer.inlineCallbacks
    def test_access_log_one_entry_per_request_b63_b64(self):
        yield self.get("app.example", "/a?q=1")
        self.mgmt.answer = pb.ValidateTunnelPeerResponse(valid=False)
        self.cache.evict_account("acct")
        yield self.get("app.example", "/b")
        self.assertEqual(len(self.mgmt.logs), 2)
        ok, denied = self.mgmt.logs
        self.assertEqual((ok.path, ok.response_code, ok.auth_mechanism, ok.user_id,
                          ok.auth_success, ok.source_ip, ok.host),
                         ("/a", 200, "oidc", "u1", True, PEER_IP, "app.example"))
        self.assertEqual((denied.response_code, denied.user_id, denied.auth_success),
                         (403, "", False))
        # the entry names the upstream target used; none for a request never proxied
        self.assertEqual(ok.nbgw_target, f"http://127.0.0.1:{self.up_port.getHost().port}")
        self.assertEqual(denied.nbgw_target, "")


    @defer.inlineCallbacks
    def test_unknown_host_not_logged(self):
        """No access log for hosts the gateway does not serve (management would
        reject an entry without an account: a failed RPC per request)."""
        yield self.get("nope.example")
        yield self.get("app.example")
        self.assertEqual([e.host for e in self.mgmt.logs], ["app.example"])


class PublicListenerTests(unittest.TestCase):
    """The host-network listener never serves private mappings (b20)."""

    @defer.inlineCallbacks
    def test_private_on_public_listener_is_403_without_rpc_b20(self):
        mgmt = Mgmt()
        entries = {"app.example": entry_from_mapping(mapping(9))}
        gate = PrivateGate(TunnelValidationCache(mgmt, reactor), lambda a, ip: True)
        proxy = ReverseProxy(reactor, UpstreamPools(reactor),
                             lambda acct, direct: DirectDialer(reactor))
        site = ProxySite(GatewayResource(lookup=entries.get, proxy=proxy, gate=gate))
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        agent = Agent(reactor)
        resp = yield agent.request(
            b"GET", f"http://127.0.0.1:{port.getHost().port}/".encode(),
            Headers({b"host": [b"app.example"], b"connection": [b"close"]}))
        body = yield readBody(resp)
        self.assertEqual((resp.code, body), (403, b"Forbidden\n"))
        self.assertEqual(mgmt.calls, [])
