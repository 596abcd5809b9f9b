"""The route's plan keeps the agent the proxy's pools gave for its dialer and
timeout (no pools lookup, and no key tuple hashed, per request), and asks
the pools again when the account's dialer or the timeout differ, or when the
pools retired the agent's connection pool (the account's tunnel went away,
or the pools closed): a request never goes through a dropped pool."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from nbgateway._proto import proxy_service_pb2 as pb
from nbgateway.auth.tunnel import PrivateGate, TunnelValidationCache
from nbgateway.dial.pool import UpstreamPools
from nbgateway.http.site import GatewayResource
from nbgateway.observe.metrics import RequestStats
from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import ProxySite
from nbgateway.routes.service import entry_from_mapping
from tests.proxy.test_lean_path import GET, PEER, _Log, _Mgmt

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Dialer:
    """An account's dialer: in-memory upstream connections."""

    def __init__(self, upstreams: list[tuple[StringTransport, Any]]) -> None:
        self.upstreams = upstreams  # every connection any dialer made, oldest first
        self.dials = 0

    def endpoint(self, host: str, port: int, timeout: float) -> Any:
        made = self.upstreams
        self.dials += 1

        class Endpoint:
            def connect(self, factory: Any) -> defer.Deferred[Any]:
                proto = factory.buildProtocol(None)
                wire = StringTransport()
                proto.makeConnection(wire)
                made.append((wire, proto))
                return defer.succeed(proto)

        return Endpoint()


class _CountingPools(UpstreamPools):
    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self.asked = 0

    def agent(self, *args: Any) -> Any:
        self.asked += 1
        return super().agent(*args)


class PlanAgentTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        m = pb.ProxyMapping(
            id="svc-app", account_id="acct", domain="app.example", private=True,
            path=[pb.PathMapping(path="/", target="http://127.0.0.1:8081/",
                                 options=pb.PathTargetOptions(direct_upstream=True))])
        entries = {m.domain: entry_from_mapping(m)}
        gate = PrivateGate(TunnelValidationCache(_Mgmt(), self.clock), lambda a, ip: True)
        self.pools = _CountingPools(self.clock)
        self.upstreams: list[tuple[StringTransport, Any]] = []
        self.dialer = _Dialer(self.upstreams)
        self.proxy = ReverseProxy(self.clock, self.pools, lambda a, d: self.dialer,
                                  clock=self.clock)
        res = GatewayResource(lookup=entries.get, proxy=self.proxy, gate=gate,
                              listener_account="acct", access_log=_Log(), clock=self.clock,
                              request_stats=RequestStats())
        site = ProxySite(res, reactor=self.clock, fast=True)
        self.channel = site.buildProtocol(IPv4Address("TCP", PEER, 40000))
        self.client = StringTransport(peerAddress=IPv4Address("TCP", PEER, 40000),
                                      hostAddress=IPv4Address("TCP", "100.64.0.1", 80))
        self.channel.makeConnection(self.client)

    def request(self) -> Any:
        """One request answered upstream; returns the upstream connection used."""
        self.client.clear()
        self.channel.dataReceived(GET)
        [proto] = [p for _w, p in self.upstreams if p._active]
        proto.dataReceived(ANSWER)
        self.assertTrue(self.client.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        return proto

    def test_the_pools_are_asked_once_per_dialer_and_timeout(self):
        first = self.request()
        for _ in range(3):
            self.assertIs(self.request(), first)  # the same pooled connection
        self.assertEqual(self.pools.asked, 1)
        # the account's dialer changes: asked again (the new agent shares the
        # account's pool, so the kept connection still serves)
        self.dialer = _Dialer(self.upstreams)
        self.assertIs(self.request(), first)
        self.assertEqual(self.pools.asked, 2)
        self.assertIs(self.request(), first)
        self.assertEqual(self.pools.asked, 2)
        # a new connection is dialed through the new dialer
        first.transport.loseConnection()
        first.connectionLost()
        self.request()
        self.assertEqual(self.dialer.dials, 1)
        self.assertEqual(self.pools.asked, 2)
        # another timeout: asked again (the pools' agent dials with it)
        self.proxy.default_timeout += 1
        self.proxy.max_dial_timeout = 0
        self.request()
        self.assertEqual(self.pools.asked, 3)

    def test_a_retired_pool_is_never_used_again(self):
        first = self.request()
        old_pool = first.pool
        self.pools.close_account("acct")
        self.assertTrue(old_pool.retired)
        second = self.request()
        self.assertEqual(self.pools.asked, 2)
        self.assertIsNot(second.pool, old_pool)  # a new pool, a new connection
        self.assertIn(second.pool, self.pools._pools.values())
        self.assertEqual(old_pool.idle(), 0)  # nothing went back to the dropped pool
        self.pools.close()
        self.assertTrue(second.pool.retired)
        third = self.request()
        self.assertEqual(self.pools.asked, 3)
        self.assertIsNot(third.pool, second.pool)
