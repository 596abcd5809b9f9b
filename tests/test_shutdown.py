"""Graceful shutdown of GatewayService (issue 7): readiness fails
first, every listener stops accepting, in-flight requests finish (up to
``--drain-timeout``), and only then do the tunnels close.

Real sockets in one process: a client WireGuardDevice + netstack talks over
UDP on loopback to the gateway's WireGuard port; the upstream is a real HTTP
server on 127.0.0.1 that holds the request until the test releases it.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.mgmt.netmap import AccountNetwork, InboundRule, RosterPeer
from nbgateway.netstack.endpoints import TunnelAgentEndpointFactory
from nbgateway.netstack.stack import Stack
from nbgateway.wireguard import udp
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key, key_to_base64, public_key
from tests.test_service import start_gateway

CLIENT_IP = "100.64.0.10"
GATEWAY_IP = "100.64.0.1"
BODY = b"slow response body\n" * 2000  # ~38 KB: several segments through the tunnel


class Held(resource.Resource):
    """Holds every request until :meth:`release`."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.pending: list = []

    def render(self, request):
        self.pending.append(request)
        return server.NOT_DONE_YET

    def release(self):
        for request in self.pending:
            request.setHeader(b"content-length", b"%d" % len(BODY))
            request.write(BODY)
            request.finish()
        self.pending = []


class Channel:
    instances: list = []

    def __init__(self, account_id, private_key, on_map):
        self.on_map = on_map
        Channel.instances.append(self)

    def start(self):
        pass

    def stop(self):
        pass


async def _wait(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


class GracefulShutdownTests(unittest.TestCase):
    timeout = 30
    drain_timeout = "20s"

    @defer.inlineCallbacks
    def setUp(self):
        Channel.instances = []
        self.stopping = None
        self.held = Held()
        self.upstream = reactor.listenTCP(0, server.Site(self.held), interface="127.0.0.1")
        self.svc, self.mgmt = start_gateway(
            self, Channel, private=True, drain_timeout=self.drain_timeout,
            direct_upstream_allow="127.0.0.1/32@acct")  # loopback upstream
        self.public_port = self.svc.public_port.getHost().port
        port = self.upstream.getHost().port
        yield self.mgmt.snapshot([pb.ProxyMapping(
            type=pb.UPDATE_TYPE_CREATED, id="svc1", account_id="acct", domain="app.example",
            auth_token="tok", private=True,
            path=[pb.PathMapping(path="/", target=f"http://127.0.0.1:{port}/",
                                 options=pb.PathTargetOptions(direct_upstream=True))]),
            pb.ProxyMapping(
            type=pb.UPDATE_TYPE_CREATED, id="svc2", account_id="acct", domain="pub.example",
            auth_token="tok2", private=False,
            path=[pb.PathMapping(path="/", target=f"http://127.0.0.1:{port}/",
                                 options=pb.PathTargetOptions(direct_upstream=True))])])
        self.client_key = generate_private_key()
        self.client = WireGuardDevice(self.client_key, reactor)
        self.client_udp = udp.listen(reactor, self.client, 0, interface="127.0.0.1")
        self.client_stack = Stack(self.client, reactor, [CLIENT_IP])
        self.client.sink = self.client_stack
        runtime = self.svc.accounts.get("acct")
        self.client.add_peer(runtime.device.public_key, allowed_ips=[f"{GATEWAY_IP}/32"],
                             endpoint=("127.0.0.1", self.svc.wg_port))
        key = public_key(self.client_key)
        yield Channel.instances[0].on_map(AccountNetwork(
            serial=1, address=ipaddress.ip_interface(f"{GATEWAY_IP}/10"),
            roster=(RosterPeer(key_to_base64(key), key,
                               (ipaddress.ip_network(f"{CLIENT_IP}/32"),)),),
            inbound_rules=(InboundRule(action="allow",
                                       sources=(ipaddress.ip_network(f"{CLIENT_IP}/32"),),
                                       protocols=frozenset({6}), ports=((80, 80),)),)))
        self.mgmt.allow_tunnel_peer(CLIENT_IP, "app.example", user_email="alice@example.com",
                                    groups=[("g1", "eng")])
        self.agent = Agent.usingEndpointFactory(
            reactor, TunnelAgentEndpointFactory(self.client_stack, timeout=5))

    @defer.inlineCallbacks
    def tearDown(self):
        self.held.release()
        if self.stopping is None:
            self.stopping = self.svc.stopService()
        yield self.stopping
        self.client_stack.close()
        self.client.close()
        yield self.client_udp.stopListening()
        yield self.upstream.stopListening()
        yield deferLater(reactor, 0, lambda: None)

    def get(self, path: str = "/"):
        return self.agent.request(
            b"GET", f"http://{GATEWAY_IP}{path}".encode(),
            Headers({b"host": [b"app.example"], b"connection": [b"close"]}))

    def public_get(self, path: str):
        """GET ``path`` of pub.example on the public listener (a new host connection)."""
        return Agent(reactor).request(
            b"GET", f"http://127.0.0.1:{self.public_port}{path}".encode(),
            Headers({b"host": [b"pub.example"], b"connection": [b"close"]}))

    def public_refuses(self) -> bool:
        with socket.socket() as s:
            s.settimeout(2)
            return s.connect_ex(("127.0.0.1", self.public_port)) != 0

    @defer.inlineCallbacks
    def test_queued_handshake_initiations_do_not_outlive_the_stop(self):
        # a burst of initiations queued in the mux (drained 8 per reactor
        # turn): stopping the gateway drops the queue and its pending turn
        from nbgateway.wireguard.constants import MESSAGE_INITIATION, MESSAGE_INITIATION_SIZE

        junk = struct.pack("<I", MESSAGE_INITIATION).ljust(MESSAGE_INITIATION_SIZE, b"\x01")
        self.svc.mux.datagramsReceived([(junk, ("127.0.0.1", 9))] * 40)
        self.assertGreater(self.svc.mux.handshake_queue_depth, 0)
        self.stopping = self.svc.stopService()
        yield self.stopping
        self.assertEqual(self.svc.mux.handshake_queue_depth, 0)
        self.assertIsNone(self.svc.mux._drain_call)

    @defer.inlineCallbacks
    def test_request_in_flight_completes_and_new_ones_are_refused(self):
        self.svc.health.set_management_connected(True)
        self.assertTrue(self.svc.health.ready())
        self.assertFalse(self.public_refuses())
        in_flight = self.get("/slow")
        yield defer.ensureDeferred(_wait(lambda: self.held.pending, "the upstream request"))
        self.assertEqual(self.svc.metrics.requests.active, 1)

        stopped: list[bool] = []
        stopping = self.stopping = self.svc.stopService()
        stopping.addBoth(lambda result: stopped.append(True) or result)
        self.assertFalse(stopped, "stopService did not wait for the request")
        self.assertFalse(self.svc.health.ready())  # readiness fails first
        # no longer accepting: the public listener and the tunnel listener are gone
        yield defer.ensureDeferred(_wait(self.public_refuses, "the public port to close"))
        with self.assertRaises(ConnectionRefusedError):  # RST from the tunnel's netstack
            yield self.get("/new")
        self.assertEqual(len(self.held.pending), 1)  # the new request never reached upstream
        # the tunnel is still up for the request in flight
        self.assertFalse(self.svc.accounts.get("acct").stack.closed)
        self.assertFalse(stopped)

        self.held.release()
        response = yield in_flight
        body = yield readBody(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, BODY)
        yield stopping
        self.assertIsNone(self.svc.udp_port)
        self.assertEqual(self.svc.accounts.runtimes, {})


    @defer.inlineCallbacks
    def test_request_in_flight_on_the_public_listener_completes(self):
        in_flight = self.public_get("/slow")
        yield defer.ensureDeferred(_wait(lambda: self.held.pending, "the upstream request"))
        stopped: list[bool] = []
        self.stopping = self.svc.stopService()
        self.stopping.addBoth(lambda result: stopped.append(True) or result)
        yield defer.ensureDeferred(_wait(self.public_refuses, "the public port to close"))
        self.assertFalse(stopped)
        self.held.release()
        response = yield in_flight
        body = yield readBody(response)
        self.assertEqual((response.code, body), (200, BODY))
        yield self.stopping
        self.assertTrue(stopped)


class DrainTimeoutTests(GracefulShutdownTests):
    drain_timeout = "300ms"

    test_request_in_flight_completes_and_new_ones_are_refused = None  # type: ignore
    test_request_in_flight_on_the_public_listener_completes = None  # type: ignore

    @defer.inlineCallbacks
    def test_request_still_running_at_the_drain_timeout_is_cut(self):
        """Tunnel: at the deadline the connection is reset (issue 11.8), so the
        client fails at once instead of waiting for its own timeout."""
        in_flight = self.get("/forever")
        yield defer.ensureDeferred(_wait(lambda: self.held.pending, "the upstream request"))
        runtime = self.svc.accounts.get("acct")
        self.stopping = self.svc.stopService()
        yield self.stopping  # fires although the upstream never answered
        self.assertEqual(len(self.held.pending), 1)  # cut: the upstream never answered
        self.assertTrue(runtime.stack.closed)
        self.assertIsNone(self.svc.udp_port)
        error = yield _outcome(in_flight, within=2.0)
        self.assertIsNotNone(error, "the client was left waiting: no RST reached it")
        self.assertIsInstance(error, ResponseNeverReceived)
        reasons = [r.type for r in error.reasons]
        self.assertTrue(set(reasons) & {ConnectionLost, ConnectionRefusedError}, reasons)

    @defer.inlineCallbacks
    def test_public_request_still_running_at_the_drain_timeout_is_reset(self):
        """Public listener: the host socket is aborted (SO_LINGER 0: RST)."""
        in_flight = self.public_get("/forever")
        yield defer.ensureDeferred(_wait(lambda: self.held.pending, "the upstream request"))
        self.stopping = self.svc.stopService()
        yield self.stopping
        error = yield _outcome(in_flight, within=2.0)
        self.assertIsNotNone(error, "the client was left waiting: no RST reached it")
        self.assertIsInstance(error, ResponseNeverReceived)
        # an RST, not an orderly close: the client sees the connection lost uncleanly
        self.assertNotIn(ConnectionDone, [r.type for r in error.reasons])


class IdleConnectionTests(GracefulShutdownTests):
    """After a complete drain, idle keep-alive connections are closed (FIN), not
    left dangling on a tunnel that is gone."""

    drain_timeout = "5s"
    test_request_in_flight_completes_and_new_ones_are_refused = None  # type: ignore
    test_request_in_flight_on_the_public_listener_completes = None  # type: ignore

    @defer.inlineCallbacks
    def test_idle_public_keepalive_connection_is_closed(self):
        sock = socket.create_connection(("127.0.0.1", self.public_port), timeout=5)
        self.addCleanup(sock.close)
        yield deferLater(reactor, 0.1, lambda: None)  # accepted
        self.stopping = self.svc.stopService()
        yield self.stopping
        sock.setblocking(False)
        closed = []

        def check() -> bool:
            try:
                closed.append(sock.recv(1) == b"")
            except BlockingIOError:
                return False
            except ConnectionResetError:
                closed.append(False)
            return True

        yield defer.ensureDeferred(_wait(check, "the idle connection to close", timeout=2))
        self.assertEqual(closed, [True])  # an orderly FIN


def _outcome(d: defer.Deferred, within: float) -> defer.Deferred:
    """Fires with the exception ``d`` fails with within ``within`` seconds; with
    None when it is still pending then (the client would wait for its own
    timeout)."""
    result: defer.Deferred = defer.Deferred()

    def settle(value) -> None:
        if not result.called:
            result.callback(value)

    d.addCallbacks(lambda r: settle(AssertionError(f"unexpected success: {r}")),
                   lambda f: settle([f]))
    call = reactor.callLater(within, settle, None)

    def done(value):
        if call.active():
            call.cancel()
        if not d.called:
            d.addErrback(lambda f: None)
            d.cancel()
        if isinstance(value, AssertionError):
            raise value
        return value[0].value if value else None

    return result.addCallback(done)
