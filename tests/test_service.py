"""GatewayService wiring end to end in one process, over real UDP on loopback:

client WireGuardDevice + netstack (tunnel IP 100.64.0.10) --UDP--> the
gateway's shared WireGuard port --mux--> the account's device --> netstack
--> inbound HTTP listener --> GatewayResource (private gate) --> ReverseProxy
--> a real upstream on 127.0.0.1.  Management is the in-memory fake client and
the peer channel a fake that the test drives; the real management server and
wireguard-go are exercised by tests/interop.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import weakref

from twisted.internet import defer, reactor
from twisted.internet.endpoints import clientFromString
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from nbgateway import tunnels
from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.config import load
from nbgateway.mgmt.fake import FakeManagementClient
from nbgateway.mgmt.netmap import AccountNetwork, DnsRecord, DnsZone, InboundRule, RosterPeer
from nbgateway.netstack.endpoints import TunnelAgentEndpointFactory, TunnelServerEndpoint
from nbgateway.netstack.stack import Stack
from nbgateway.service import GatewayService
from nbgateway.wireguard import udp
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key, key_to_base64, public_key

CLIENT_IP = "100.64.0.10"
GATEWAY_IP = "100.64.0.1"
CLIENT_IP6 = "fd00:64::10"
GATEWAY_IP6 = "fd00:64::1"


class Echo(resource.Resource):
    isLeaf = True

    def render(self, request):
        return json.dumps({k.decode().lower(): [v.decode() for v in vs]
                           for k, vs in request.requestHeaders.getAllRawHeaders()}).encode()


def start_gateway(case: unittest.TestCase, peer_channel_factory,
                  **settings: object) -> tuple[GatewayService, FakeManagementClient]:
    """A started :class:`GatewayService` fed by a :class:`FakeManagementClient` (the
    ``--mgmt`` URL is never dialled), ephemeral ports, its data in a temp directory
    of ``case``; ``settings`` are more config values (as ``load`` takes them).
    ``(service, management)``."""
    config = load({"mgmt": "http://127.0.0.1:1", "domain": "gw.test", "wg_port": "0",
                   "datadir": case.mktemp(), "health_addr": "", "addr": "127.0.0.1:0",
                   **settings}, {"NB_PROXY_TOKEN": "t"})
    mgmt = FakeManagementClient()
    svc = GatewayService(config, reactor=reactor, management=mgmt,
                         peer_channel_factory=peer_channel_factory)
    svc.privilegedStartService()
    svc.startService()
    return svc, mgmt


class Channel:
    instances: list = []

    def __init__(self, account_id, private_key, on_map):
        self.on_map = on_map
        self.stopped = False
        Channel.instances.append(self)

    def start(self):
        pass

    def stop(self):
        self.stopped = True


class GatewayServiceTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        Channel.instances = []
        self.upstream = reactor.listenTCP(0, server.Site(Echo()), interface="127.0.0.1")
        # the test upstream is on loopback (direct_upstream)
        self.svc, self.mgmt = start_gateway(self, Channel, private=True,
                                            direct_upstream_allow="127.0.0.1/32@acct")
        port = self.upstream.getHost().port
        self.mapping = pb.ProxyMapping(
            type=pb.UPDATE_TYPE_CREATED, id="svc1", account_id="acct", domain="app.example",
            auth_token="tok", private=True,
            path=[pb.PathMapping(path="/", target=f"http://127.0.0.1:{port}/",
                                 options=pb.PathTargetOptions(direct_upstream=True))])
        yield self.mgmt.snapshot([self.mapping])
        # the client peer (our own WireGuard + netstack, on a real UDP socket)
        self.client_key = generate_private_key()
        self.client = WireGuardDevice(self.client_key, reactor)
        self.client_udp = udp.listen(reactor, self.client, 0, interface="127.0.0.1")
        self.client_stack = Stack(self.client, reactor, [CLIENT_IP, CLIENT_IP6])
        self.client.sink = self.client_stack
        runtime = self.svc.accounts.get("acct")
        self.client.add_peer(runtime.device.public_key,
                             allowed_ips=[f"{GATEWAY_IP}/32", f"{GATEWAY_IP6}/128"],
                             endpoint=("127.0.0.1", self.svc.wg_port))
        key = public_key(self.client_key)
        allow_web = InboundRule(action="allow",
                                sources=(ipaddress.ip_network(f"{CLIENT_IP}/32"),
                                         ipaddress.ip_network(f"{CLIENT_IP6}/128")),
                                protocols=frozenset({6}), ports=((80, 80), (443, 443)))
        yield Channel.instances[0].on_map(AccountNetwork(
            serial=1, address=ipaddress.ip_interface(f"{GATEWAY_IP}/10"),
            address_v6=ipaddress.ip_interface(f"{GATEWAY_IP6}/64"),
            roster=(RosterPeer(key_to_base64(key), key,
                               (ipaddress.ip_network(f"{CLIENT_IP}/32"),
                                ipaddress.ip_network(f"{CLIENT_IP6}/128"))),),
            inbound_rules=(allow_web,),
            zones=(DnsZone("peers.test.", (DnsRecord("db.peers.test.", 1, 5, CLIENT_IP),)),)))
        self.agent = Agent.usingEndpointFactory(
            reactor, TunnelAgentEndpointFactory(self.client_stack, timeout=5))

    @defer.inlineCallbacks
    def tearDown(self):
        yield self.svc.stopService()
        self.client_stack.close()
        self.client.close()
        yield self.client_udp.stopListening()
        yield self.upstream.stopListening()
        yield deferLater(reactor, 0, lambda: None)

    @defer.inlineCallbacks
    def get(self, host="app.example"):
        resp = yield self.agent.request(
            b"GET", f"http://{GATEWAY_IP}/".encode(),
            Headers({b"host": [host.encode()], b"connection": [b"close"],
                     b"x-netbird-user": [b"spoofed"]}))
        body = yield readBody(resp)
        return resp, body

    @defer.inlineCallbacks
    def test_private_service_through_real_udp_and_both_netstacks(self):
        self.mgmt.allow_tunnel_peer(CLIENT_IP, "app.example", user_email="alice@example.com",
                                    groups=[("g1", "eng")])
        # an idle account's HTTP and HTTPS ports hold one placeholder factory;
        # the site and TLS dispatcher are built at the first connection
        runtime = self.svc.accounts.get("acct")
        web_ports = [p for p in runtime.listeners if hasattr(p, "factory")]
        self.assertEqual(len(web_ports), 2)
        self.assertIs(web_ports[0].factory, web_ports[1].factory)
        self.assertIsNone(web_ports[0].factory.built)
        resp, body = yield self.get()
        self.assertEqual(resp.code, 200)
        built = web_ports[0].factory.built
        self.assertEqual(type(built).__name__, "TLSOrPlainFactory")
        yield self.get()
        self.assertIs(web_ports[0].factory.built, built)  # built once
        headers = json.loads(body)
        self.assertEqual(headers["x-netbird-user"], ["alice@example.com"])
        self.assertEqual(headers["x-netbird-groups"], ["eng"])
        self.assertEqual(self.mgmt.count("validate_tunnel_peer"), 1)
        statuses = self.mgmt.calls_to("send_status_update")
        self.assertEqual(statuses[-1]["inbound_listener"], (GATEWAY_IP, 443, 80))
        self.assertEqual(self.mgmt.calls_to("create_proxy_peer")[0]["cluster"], "gw.test")

    @defer.inlineCallbacks
    def test_nbtunnel_client_endpoint_dials_through_the_running_gateway(self):
        # a host application's unchanged Agent, given only endpoint strings,
        # reaches a peer through the account's tunnel of this gateway
        runtime = self.svc.accounts.get("acct")
        self.assertIs(tunnels.registry.stack_for("acct"), runtime.stack)
        # the peer speaks first (the roster carries no endpoint; WireGuard
        # learns it from the peer's handshake), as a NetBird peer would
        yield self.get()
        peer_port = yield TunnelServerEndpoint(self.client_stack, 9000).listen(
            server.Site(Echo()))
        self.addCleanup(peer_port.stopListening)

        @implementer(IAgentEndpointFactory)
        class Strings:
            def endpointForURI(self, uri):
                return clientFromString(
                    reactor, f"nbtunnel:account=acct:host={uri.host.decode()}:port={uri.port}")

        resp = yield Agent.usingEndpointFactory(reactor, Strings()).request(
            b"GET", f"http://{CLIENT_IP}:9000/".encode(),
            Headers({b"x-probe": [b"1"], b"connection": [b"close"]}))
        body = yield readBody(resp)
        self.assertEqual(resp.code, 200)
        self.assertEqual(json.loads(body)["x-probe"], ["1"])
        with self.assertRaises(tunnels.NoTunnelError):
            tunnels.registry.stack_for("other-account")

    @defer.inlineCallbacks
    def test_stopped_gateway_leaves_the_tunnel_registry(self):
        yield self.svc.stopService()
        with self.assertRaises(tunnels.NoTunnelError):
            tunnels.registry.stack_for("acct")
        self.svc.stopService = lambda: defer.succeed(None)  # tearDown: already stopped

    @defer.inlineCallbacks
    def test_unvalidated_peer_is_forbidden(self):
        resp, body = yield self.get()  # the fake denies by default (fail closed)
        self.assertEqual((resp.code, body), (403, b"Forbidden\n"))

    @defer.inlineCallbacks
    def test_service_removed_tears_down_the_account(self):
        runtime = self.svc.accounts.get("acct")
        yield self.mgmt.push([pb.ProxyMapping(type=pb.UPDATE_TYPE_REMOVED, id="svc1",
                                              account_id="acct")])
        self.assertIsNone(self.svc.accounts.get("acct"))
        self.assertIsNone(self.svc.routes.lookup("app.example"))
        self.assertEqual(self.svc.mux.devices, [])
        self.assertTrue(runtime.stack.closed)

    @defer.inlineCallbacks
    def test_a_removed_accounts_route_plans_and_dialer_are_let_go(self):
        self.mgmt.allow_tunnel_peer(CLIENT_IP, "app.example")
        for _ in range(2):
            resp, _ = yield self.get()
            self.assertEqual(resp.code, 200)
        # one direct dialer per account, so the route's plan keeps its agent
        dialer = self.svc.dialer_for("acct", True)
        self.assertIs(dialer, self.svc.dialer_for("acct", True))
        plans = [p for p in self.svc.proxy._plans.values() if p.service.account_id == "acct"]
        self.assertEqual(len(plans), 1)
        self.assertIs(plans[0].agent[0], dialer)
        gone = weakref.ref(dialer)
        del dialer, plans
        yield self.mgmt.push([pb.ProxyMapping(type=pb.UPDATE_TYPE_REMOVED, id="svc1",
                                              account_id="acct")])
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(
            [p for p in self.svc.proxy._plans.values() if p.service.account_id == "acct"], [])
        gc.collect()
        self.assertIsNone(gone(), "a removed account's dialer is still referenced")

    @defer.inlineCallbacks
    def test_metrics_and_health_reflect_live_objects(self):
        from prometheus_client import generate_latest
        from prometheus_client.parser import text_string_to_metric_families

        self.mgmt.allow_tunnel_peer(CLIENT_IP, "app.example")
        resp, _ = yield self.get()
        self.assertEqual(resp.code, 200)
        samples = {}
        for family in text_string_to_metric_families(
                generate_latest(self.svc.metrics.registry).decode()):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(sample)
        self.assertIn("nbgateway_wireguard_handshakes_total", samples)
        self.assertGreaterEqual(
            sum(s.value for s in samples["nbgateway_wireguard_handshakes_total"]), 1)
        self.assertGreaterEqual(
            sum(s.value for s in samples.get("nbgateway_http_requests_total", [])), 1)
        # a complete snapshot was applied (setUp): startup is healthy once connected
        self.svc.health.set_management_connected(True)
        self.assertEqual(self.svc.health.startup_probe().code, 200)

    @defer.inlineCallbacks
    def test_synthetic_zone_answered_on_the_tunnel_address(self):
        from twisted.internet.protocol import DatagramProtocol
        from twisted.names import dns

        from nbgateway.netstack.udp import listen_udp

        answers = defer.Deferred()

        class Client(DatagramProtocol):
            def datagramReceived(self, data, addr):
                if not answers.called:
                    answers.callback(data)

        port = listen_udp(self.client_stack, 0, Client(), interface=CLIENT_IP)
        self.addCleanup(port.stopListening)
        for name in (b"app.example", b"db.peers.test", b"elsewhere.example"):
            query = dns.Message(id=7, recDes=True)
            query.addQuery(name, dns.A)
            answers = defer.Deferred()
            port.write(query.toStr(), (GATEWAY_IP, 53))
            raw = yield answers
            msg = dns.Message()
            msg.fromStr(raw)
            if name == b"app.example":  # a served domain -> the gateway's tunnel IP
                self.assertEqual(msg.rCode, dns.OK)
                self.assertEqual([a.payload.dottedQuad() for a in msg.answers], [GATEWAY_IP])
            elif name == b"db.peers.test":  # a zone from the network map
                self.assertEqual([(a.payload.dottedQuad(), a.ttl) for a in msg.answers],
                                 [(CLIENT_IP, 5)])
            else:
                self.assertEqual(msg.rCode, dns.EREFUSED)

    @defer.inlineCallbacks
    def test_https_over_the_tunnel_verified_against_the_local_ca(self):
        from twisted.internet.ssl import Certificate
        from twisted.web.client import BrowserLikePolicyForHTTPS

        self.mgmt.allow_tunnel_peer(CLIENT_IP, "app.example")
        # certificates on demand: the ACTIVE report described the local CA
        # without issuing the service's leaf (no expiry yet)
        reports = self.mgmt.calls_to("send_status_update")
        self.assertEqual([r["certificate"].source for r in reports], ["local-ca"])
        self.assertFalse(reports[0]["certificate"].HasField("not_after"))
        self.assertIsNone(self.svc.certificates.issued_for("app.example"))
        # the CA management hands the account's peers (its status report)
        ca = Certificate.loadPEM(reports[0]["certificate"].ca_certificate_pem.encode())
        agent = Agent.usingEndpointFactory(reactor, TunnelAgentEndpointFactory(
            self.client_stack, timeout=5, contextFactory=BrowserLikePolicyForHTTPS(ca),
            resolve=lambda host: GATEWAY_IP))
        resp = yield agent.request(b"GET", b"https://app.example/",
                                   Headers({b"connection": [b"close"]}))
        body = yield readBody(resp)
        self.assertEqual(resp.code, 200)
        self.assertEqual(json.loads(body)["x-forwarded-proto"], ["https"])
        # the handshake issued the leaf; the service was reported again with its expiry
        leaf = self.svc.certificates.issued_for("app.example")
        self.assertEqual(leaf.names, ("app.example",))
        reports = self.mgmt.calls_to("send_status_update")
        self.assertEqual(len(reports), 2)
        self.assertEqual(reports[1]["status"], pb.PROXY_STATUS_ACTIVE)
        self.assertEqual(reports[1]["certificate"].not_after.ToDatetime(),
                         leaf.cert.not_valid_after_utc.replace(tzinfo=None))

    @defer.inlineCallbacks
    def test_public_listener_refuses_private_service(self):
        port = self.svc.public_port.getHost().port
        resp = yield Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{port}/".encode(),
            Headers({b"host": [b"app.example"], b"connection": [b"close"]}))
        body = yield readBody(resp)
        self.assertEqual((resp.code, body), (403, b"Forbidden\n"))
        self.assertEqual(self.mgmt.count("validate_tunnel_peer"), 0)

    @defer.inlineCallbacks
    def test_private_service_over_ipv6_tunnel_addresses(self):
        self.mgmt.allow_tunnel_peer(CLIENT_IP6, "app.example", user_email="v6@example.com")
        resp = yield self.agent.request(
            b"GET", f"http://[{GATEWAY_IP6}]/".encode(),
            Headers({b"host": [b"app.example"], b"connection": [b"close"]}))
        body = yield readBody(resp)
        self.assertEqual(resp.code, 200)
        self.assertEqual(json.loads(body)["x-netbird-user"], ["v6@example.com"])
        self.assertEqual(json.loads(body)["x-forwarded-for"], [CLIENT_IP6])


class SighupTests(unittest.TestCase):
    """twistd mode: SIGHUP reloads certificates while the gateway runs; the
    previous handler is back after stop (library mode never touches it)."""

    @defer.inlineCallbacks
    def test_sighup_reloads_and_is_restored(self):
        import os
        import signal

        before = signal.getsignal(signal.SIGHUP)
        config = load({"mgmt": "http://127.0.0.1:1", "domain": "gw.test", "wg_port": "0",
                       "datadir": self.mktemp(), "health_addr": "", "addr": "127.0.0.1:0"},
                      {"NB_PROXY_TOKEN": "t"})
        svc = GatewayService(config, reactor=reactor, management=FakeManagementClient())
        svc.reload_on_sighup = True
        svc.privilegedStartService()
        svc.startService()
        try:
            self.assertIsNot(signal.getsignal(signal.SIGHUP), before)
            reloads = svc.certificates.reloads
            os.kill(os.getpid(), signal.SIGHUP)
            yield deferLater(reactor, 0.05, lambda: None)
            self.assertEqual(svc.certificates.reloads, reloads + 1)
        finally:
            yield svc.stopService()
        self.assertIs(signal.getsignal(signal.SIGHUP), before)
