"""The guarded direct dialer (issue 11.1) over real 127.0.0.1 sockets:
resolve once, check every address, dial exactly a checked literal address;
refusals never open a connection; the reverse proxy and the WebSocket
upgrade path turn a refusal into a 502 with the access-log verdict."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, error, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from nbgateway.dial import DirectUpstreamDeniedError
from nbgateway.dial.direct import DenialReports, DirectDialer, DirectDialStats
from nbgateway.dial.guard import DialPolicy, Listener, parse_allow_list
from nbgateway.routes.service import TargetOptions

from ..proxy._harness import EchoUpstream, ProxyHarness, curl, listen_site


class Counting(Factory):
    """A server factory that counts accepted connections."""

    def __init__(self) -> None:
        self.accepted = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        self.accepted += 1
        return Protocol()


@implementer(IHostnameResolver)
class FakeResolver:
    """Answers every name with fixed IPv4 addresses (or never, if None)."""

    def __init__(self, answers: list[str] | None) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        self.calls.append(hostName)
        receiver.resolutionBegan(None)
        if self.answers is None:
            return receiver
        for a in self.answers:
            receiver.addressResolved(IPv4Address("TCP", a, portNumber))
        receiver.resolutionComplete()
        return receiver


class RecordingReactor:
    """The real reactor with a fake name resolver; records connectTCP hosts."""

    def __init__(self, resolver: FakeResolver, clock: Any = None) -> None:
        self.nameResolver = resolver
        self.connects: list[str] = []
        self._clock = clock

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,
                   bindAddress: Any = None) -> Any:
        self.connects.append(host)
        return reactor.connectTCP(host, port, factory, timeout, bindAddress)

    def seconds(self) -> float:
        return (self._clock or reactor).seconds()

    def callLater(self, *a: Any, **kw: Any) -> Any:
        return (self._clock or reactor).callLater(*a, **kw)


class GuardedDialerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.server = Counting()
        self.port = reactor.listenTCP(0, self.server, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.pnum = self.port.getHost().port
        self.stats = DirectDialStats()

    def dialer(self, allow: str, answers: list[str] | None = None, *, account: str = "acct",
               listeners: list[Listener] | None = None, clock: Any = None) -> DirectDialer:
        self.resolver = FakeResolver(answers if answers is not None else [])
        if answers is None and clock is not None:
            self.resolver.answers = None
        self.reactor = RecordingReactor(self.resolver, clock)
        policy = DialPolicy(parse_allow_list(allow), listeners=lambda: listeners or [])
        return DirectDialer(self.reactor, policy=policy, stats=self.stats).for_account(account)

    def connect(self, dialer: DirectDialer, host: str, timeout: float = 5) -> defer.Deferred:
        return dialer.endpoint(host, self.pnum, timeout).connect(Factory.forProtocol(Protocol))

    @defer.inlineCallbacks
    def settle(self) -> Any:
        from twisted.internet.task import deferLater

        yield deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_name_resolving_to_loopback_is_denied_without_connection(self):
        d = self.dialer("0.0.0.0/0", ["127.0.0.1"])
        exc = yield self.assertFailure(self.connect(d, "innocent.example"),
                                       DirectUpstreamDeniedError)
        self.assertEqual(exc.reason, "loopback")
        self.assertEqual(exc.address, "127.0.0.1")
        self.assertEqual(self.resolver.calls, ["innocent.example"])
        self.assertEqual(self.reactor.connects, [])
        yield self.settle()
        self.assertEqual(self.server.accepted, 0)
        self.assertEqual(self.stats.denied["loopback"], 1)

    @defer.inlineCallbacks
    def test_through_twisteds_getaddrinfo_resolver(self):
        # the reactor's real resolver machinery (thread pool), fed by a fake getaddrinfo
        import socket

        from twisted.internet._resolver import GAIResolver

        asked: list[str] = []

        def gai(host, port, family=0, socktype=0, proto=0, flags=0):
            asked.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port or 0))]

        d = self.dialer("127.0.0.1/32@acct")
        d.reactor.nameResolver = GAIResolver(reactor, getaddrinfo=gai)
        proto = yield self.connect(d, "rebind.example")
        proto.transport.loseConnection()
        self.assertEqual(self.reactor.connects, ["127.0.0.1"])
        other = DirectDialer(d.reactor, policy=d.policy, stats=self.stats).for_account("b")
        exc = yield self.assertFailure(self.connect(other, "rebind.example"),
                                       DirectUpstreamDeniedError)
        self.assertEqual((exc.reason, exc.address), ("loopback", "127.0.0.1"))
        self.assertEqual(asked, ["rebind.example", "rebind.example"])
        self.assertEqual(self.reactor.connects, ["127.0.0.1"])

    @defer.inlineCallbacks
    def test_resolved_once_then_only_the_checked_address_is_dialed(self):
        # the name resolves to a denied and an allowed address: one resolution,
        # the denied one is skipped, the connection goes to the checked literal
        d = self.dialer("127.0.0.1/32@acct", ["127.0.0.2", "127.0.0.1"])
        proto = yield self.connect(d, "app.example")
        proto.transport.loseConnection()
        self.assertEqual(self.resolver.calls, ["app.example"])
        self.assertEqual(self.reactor.connects, ["127.0.0.1"])
        self.assertEqual(self.stats.allowed, 1)

    @defer.inlineCallbacks
    def test_numeric_spellings_never_reach_the_resolver(self):
        for spelling in ("0x7f000001", "2130706433", "127.1", "[::ffff:127.0.0.1]", "0177.0.0.1"):
            d = self.dialer("")
            exc = yield self.assertFailure(self.connect(d, spelling), DirectUpstreamDeniedError)
            self.assertEqual(exc.reason, "loopback", spelling)
            self.assertEqual(self.resolver.calls, [], spelling)
            # listed for the account: dialed as the literal 127.0.0.1
            d = self.dialer("127.0.0.1/32@acct")
            proto = yield self.connect(d, spelling)
            proto.transport.loseConnection()
            self.assertEqual(self.reactor.connects, ["127.0.0.1"], spelling)
            self.assertEqual(self.resolver.calls, [], spelling)
        yield self.settle()
        self.assertEqual(self.server.accepted, 5)

    @defer.inlineCallbacks
    def test_localhost_is_loopback_without_dns(self):
        d = self.dialer("0.0.0.0/0,::/0", ["192.0.2.1"])
        exc = yield self.assertFailure(self.connect(d, "localhost"), DirectUpstreamDeniedError)
        self.assertEqual(exc.reason, "loopback")
        self.assertEqual(self.resolver.calls, [])

    @defer.inlineCallbacks
    def test_entry_scoped_to_another_account_does_not_apply(self):
        d = self.dialer("127.0.0.1/32@other", account="acct")
        exc = yield self.assertFailure(self.connect(d, "127.0.0.1"), DirectUpstreamDeniedError)
        self.assertEqual(exc.reason, "loopback")
        yield self.settle()
        self.assertEqual(self.server.accepted, 0)

    @defer.inlineCallbacks
    def test_own_listener_denied_even_when_listed(self):
        d = self.dialer("127.0.0.0/8", listeners=[Listener.of("127.0.0.1", self.pnum)])
        exc = yield self.assertFailure(self.connect(d, "127.0.0.1"), DirectUpstreamDeniedError)
        self.assertEqual(exc.reason, "gateway_listener")
        d = self.dialer("127.0.0.0/8", listeners=[Listener.of("", self.pnum)])
        exc = yield self.assertFailure(self.connect(d, "0x7f.1"), DirectUpstreamDeniedError)
        self.assertEqual(exc.reason, "gateway_listener")
        yield self.settle()
        self.assertEqual(self.server.accepted, 0)
        self.assertEqual(self.stats.denied["gateway_listener"], 2)

    @defer.inlineCallbacks
    def test_invalid_and_unresolvable_hosts(self):
        d = self.dialer("0.0.0.0/0")
        exc = yield self.assertFailure(self.connect(d, "1.2.3.999"), DirectUpstreamDeniedError)
        self.assertEqual(exc.reason, "invalid_host")
        exc = yield self.assertFailure(self.connect(d, "nothing.example"),
                                       DirectUpstreamDeniedError)
        self.assertEqual(exc.reason, "no_address")
        self.assertEqual(self.resolver.calls, ["nothing.example"])

    def test_resolution_is_bounded_by_the_timeout(self):
        clock = Clock()
        d = self.dialer("0.0.0.0/0", None, clock=clock)
        result = self.connect(d, "slow.example", timeout=3)
        clock.advance(3.1)
        self.failureResultOf(result, error.TimeoutError)
        self.assertEqual(self.reactor.connects, [])

    def test_a_black_holed_address_leaves_time_for_the_next(self):
        attempts: list[tuple[str, float, Any]] = []

        class Connector:
            def stopConnecting(self) -> None:
                pass

            def getDestination(self) -> Any:
                return IPv4Address("TCP", "127.0.0.3", 1)

        def connect_tcp(host, port, factory, timeout=30, bindAddress=None):
            attempts.append((host, timeout, factory))
            connector = Connector()
            factory.startedConnecting(connector)
            return connector

        clock = Clock()
        d = self.dialer("127.0.0.0/8", ["127.0.0.3", "127.0.0.4"], clock=clock)
        d.reactor.connectTCP = connect_tcp
        result = self.connect(d, "two.example", timeout=10)
        self.assertEqual([(h, t) for h, t, _ in attempts], [("127.0.0.3", 5.0)])
        clock.advance(5)
        attempts[0][2].clientConnectionFailed(Connector(), Failure(error.TimeoutError()))
        self.assertEqual([(h, t) for h, t, _ in attempts],
                         [("127.0.0.3", 5.0), ("127.0.0.4", 5.0)])
        self.assertNoResult(result)
        clock.advance(5.1)  # the overall deadline
        self.failureResultOf(result, error.TimeoutError)

    @defer.inlineCallbacks
    def test_an_address_the_socket_layer_rejects_moves_on_to_the_next(self):
        d = self.dialer("127.0.0.0/8", ["127.0.0.9", "127.0.0.1"])
        real = d.reactor.connectTCP

        def connect_tcp(host, *a, **kw):
            if host == "127.0.0.9":
                raise OSError("rejected")
            return real(host, *a, **kw)

        d.reactor.connectTCP = connect_tcp
        proto = yield self.connect(d, "two.example")
        proto.transport.loseConnection()
        self.assertEqual(self.reactor.connects, ["127.0.0.1"])

    def test_cancel_during_resolution(self):
        clock = Clock()
        d = self.dialer("0.0.0.0/0", None, clock=clock)
        result = self.connect(d, "slow.example", timeout=3)
        result.cancel()
        self.failureResultOf(result, defer.CancelledError)
        clock.advance(5)
        self.assertEqual(self.reactor.connects, [])

    def test_metrics(self):
        self.stats.denied["loopback"] += 2
        self.stats.allowed += 1
        (fam,) = list(self.stats.collect())
        samples = {(s.labels["result"], s.labels["reason"]): s.value for s in fam.samples
                   if s.name.endswith("_total")}
        self.assertEqual(samples[("denied", "loopback")], 2)
        self.assertEqual(samples[("allowed", "")], 1)
        self.assertEqual(samples[("denied", "gateway_listener")], 0)


class ProxyRefusalTests(unittest.TestCase):
    """The reverse proxy: a refused direct dial is a 502 with the verdict."""

    def setUp(self) -> None:
        self.upstream = EchoUpstream()
        self.up_port, _site = listen_site(self.upstream)
        self.addCleanup(self.up_port.stopListening)
        self.up_pnum = self.up_port.getHost().port
        self.stats = DirectDialStats()
        self.h = ProxyHarness()
        policy = DialPolicy(parse_allow_list("127.0.0.1/32@friend"))
        guarded = DirectDialer(reactor, policy=policy, stats=self.stats)
        self.h.proxy.dialer_for = lambda acct, direct: guarded.for_account(acct)
        self.reported: list[tuple[str, str]] = []
        self.h.proxy.on_dial_denied = lambda svc, exc: self.reported.append(
            (svc.domain, exc.reason))
        self.port = self.h.listen()
        self.addCleanup(self.h.close)

    def get(self, host: str, *extra: str):
        return curl("-H", f"Host: {host}", *extra, f"http://127.0.0.1:{self.port}/")

    @defer.inlineCallbacks
    def test_denied_dial_is_502_with_access_log_verdict_and_no_upstream_request(self):
        opts = TargetOptions(direct_upstream=True)
        for n, target in enumerate((f"http://127.0.0.1:{self.up_pnum}/",
                                    f"http://2130706433:{self.up_pnum}/",
                                    f"http://[::ffff:127.0.0.1]:{self.up_pnum}/")):
            self.h.add(f"evil{n}.example", {"/": target}, opts=opts, account_id="mallory")
            status, _, body = yield self.get(f"evil{n}.example")
            self.assertEqual(status, 502, target)
            self.assertIn(b"Destination Not Allowed", body)
            self.assertEqual(self.h.contexts[-1].auth_mechanism, "direct_upstream_denied")
        self.assertEqual(self.upstream.seen, [])
        self.assertEqual(self.stats.denied["loopback"], 3)
        self.assertEqual(self.reported, [(f"evil{n}.example", "loopback") for n in range(3)])
        # the account the entry is scoped to gets through
        self.h.add("ok.example", {"/": f"http://127.0.0.1:{self.up_pnum}/"}, opts=opts,
                   account_id="friend")
        status, _, _ = yield self.get("ok.example")
        self.assertEqual(status, 200)
        self.assertEqual(len(self.upstream.seen), 1)

    @defer.inlineCallbacks
    def test_websocket_upgrade_is_guarded_too(self):
        opts = TargetOptions(direct_upstream=True)
        self.h.add("ws.example", {"/": f"http://127.0.0.1:{self.up_pnum}/"}, opts=opts,
                   account_id="mallory")
        status, _, body = yield self.get(
            "ws.example", "-H", "Connection: Upgrade", "-H", "Upgrade: websocket",
            "-H", "Sec-WebSocket-Version: 13", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZQ==")
        self.assertEqual(status, 502)
        self.assertIn(b"Destination Not Allowed", body)
        self.assertEqual(self.h.contexts[-1].auth_mechanism, "direct_upstream_denied")
        self.assertEqual(self.upstream.seen, [])
        self.assertEqual(self.stats.denied["loopback"], 1)
        self.assertEqual(self.reported, [("ws.example", "loopback")])


class DenialReportTests(unittest.TestCase):
    def test_one_report_per_service_per_interval_and_bounded(self):
        r = DenialReports(interval=60, max_services=2)
        self.assertTrue(r.due("s1", 0))
        self.assertFalse(r.due("s1", 59))
        self.assertTrue(r.due("s2", 10))
        self.assertTrue(r.due("s1", 61))
        self.assertTrue(r.due("s3", 62))  # s2 (oldest) is forgotten
        self.assertEqual(len(r._last), 2)
        self.assertTrue(r.due("s2", 63))

    def test_message_names_target_and_reason(self):
        msg = DenialReports.message(DirectUpstreamDeniedError("loopback", "localhost", 8081,
                                                              "127.0.0.1"))
        self.assertIn("localhost:8081 (127.0.0.1)", msg)
        self.assertIn("loopback", msg)
        self.assertIn("--direct-upstream-allow", msg)
        msg = DenialReports.message(DirectUpstreamDeniedError("gateway_listener", "127.0.0.1",
                                                              8080, "127.0.0.1"))
        self.assertIn("own listeners", msg)


def test_for_account_is_one_dialer_per_account_until_forgotten():
    base = DirectDialer(object(), policy=DialPolicy([], listeners=list, is_local=lambda h: False))
    a = base.for_account("a")
    assert base.for_account("a") is a and base.for_account("b") is not a
    assert (a.account_id, a.policy) == ("a", base.policy)
    base.forget_account("a")
    base.forget_account("never-seen")  # nothing to drop: no error
    again = base.for_account("a")
    assert again is not a and again.account_id == "a"
