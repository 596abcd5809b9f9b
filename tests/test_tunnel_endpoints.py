"""``nbtunnel:`` string endpoints (twisted/plugins/nbtunnel_endpoints.py over
nbgateway.tunnels): an unchanged twisted.web ``Site`` listens and an
unchanged ``Agent`` dials through account tunnels found in the process-wide
registry, in memory; clear errors without a running gateway or tunnel."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from nbgateway import tunnels
from nbgateway.netstack.testing import make_stack_pair, run_until


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        peer, host = request.getClientAddress(), request.getHost()
        return b"hello %s -> %s:%d" % (peer.host.encode(), host.host.encode(), host.port)


@implementer(IAgentEndpointFactory)
class StringEndpoints:
    """An Agent endpoint factory that only builds ``nbtunnel:`` strings."""

    def __init__(self, reactor, account: str) -> None:
        self.reactor, self.account = reactor, account
        self.made: list[str] = []

    def endpointForURI(self, uri):
        desc = f"nbtunnel:account={self.account}:host={uri.host.decode()}:port={uri.port}"
        self.made.append(desc)
        return clientFromString(self.reactor, desc)


class Gateway:
    """Stands in for a started GatewayService: answers account -> netstack."""

    def __init__(self, stacks: dict) -> None:
        self.stacks = stacks

    def __enter__(self):
        tunnels.registry.register(self, self.stacks.get)
        return self

    def __exit__(self, *exc):
        tunnels.registry.unregister(self)


def _result(clock, d):
    out: list = []
    d.addBoth(out.append)
    run_until(clock, lambda: bool(out), timeout=120)
    assert out, "did not finish"
    return out[0]


def test_site_and_agent_through_string_endpoints():
    clock = Clock()
    clock.advance(10)
    a, b, _ = make_stack_pair(clock)
    with Gateway({"acct-a": a, "acct-b": b}):
        port = _result(clock, serverFromString(clock, "nbtunnel:account=acct-b:port=8080")
                       .listen(Site(Hello(), reactor=clock)))
        assert port.getHost().port == 8080
        endpoints = StringEndpoints(clock, "acct-a")
        agent = Agent.usingEndpointFactory(clock, endpoints,
                                           pool=HTTPConnectionPool(clock, persistent=False))
        resp = _result(clock, agent.request(b"GET", b"http://100.64.0.2:8080/x", Headers()))
        body = _result(clock, readBody(resp))
        assert resp.code == 200 and body == b"hello 100.64.0.1 -> 100.64.0.2:8080"
        assert endpoints.made == ["nbtunnel:account=acct-a:host=100.64.0.2:port=8080"]
        # an IPv6 literal with escaped colons, and a bound interface
        port6 = _result(clock, serverFromString(
            clock, r"nbtunnel:account=acct-b:port=81:interface=fd00\:\:2")
            .listen(Site(Hello(), reactor=clock)))
        proto = _result(clock, clientFromString(
            clock, r"nbtunnel:account=acct-a:host=fd00\:\:2:port=81:timeout=5")
            .connect(_factory()))
        assert proto.transport.getPeer().host == "fd00::2"
        proto.transport.loseConnection()
        port.stopListening()
        port6.stopListening()


def _factory():
    from twisted.internet.protocol import Factory, Protocol

    return Factory.forProtocol(Protocol)


def test_without_a_running_gateway_listen_and_connect_fail_clearly():
    clock = Clock()
    server = serverFromString(clock, "nbtunnel:account=acct-x:port=80")
    failure = _result(clock, server.listen(Site(Hello())))
    assert failure.check(tunnels.NoTunnelError)
    assert "no nbgateway is running in this process" in str(failure.value)
    client = clientFromString(clock, "nbtunnel:account=acct-x:host=100.64.0.2:port=80")
    failure = _result(clock, client.connect(_factory()))
    assert failure.check(tunnels.NoTunnelError)


def test_unknown_account_names_the_account():
    clock = Clock()
    a, _b, _ = make_stack_pair(clock)
    with Gateway({"acct-a": a}):
        failure = _result(clock, clientFromString(
            clock, "nbtunnel:account=other:host=100.64.0.2:port=80").connect(_factory()))
        assert failure.check(tunnels.NoTunnelError)
        assert "'other'" in str(failure.value) and "network map" in str(failure.value)


@pytest.mark.parametrize(("kind", "desc", "error"), [
    ("server", "nbtunnel:account=a", TypeError),                      # no port
    ("server", "nbtunnel:account=a:port=80:colour=red", TypeError),   # unknown key
    ("server", "nbtunnel:account=a:port=99999", ValueError),
    ("server", "nbtunnel:account=a:port=80:interface=gw.example", ValueError),
    ("server", "nbtunnel:a:80", TypeError),                           # positional
    ("client", "nbtunnel:account=a:host=db.example:port=80", ValueError),  # no resolver
    ("client", "nbtunnel:account=a:host=100.64.0.2", TypeError),
    ("client", "nbtunnel:account=a:host=100.64.0.2:port=0", ValueError),
    ("client", "nbtunnel:account=a:host=100.64.0.2:port=80:timeout=-1", ValueError),
    ("client", "nbtunnel:host=100.64.0.2:port=80", TypeError),         # no account
])
def test_bad_strings_are_refused_at_parse_time(kind, desc, error):
    parse = serverFromString if kind == "server" else clientFromString
    with pytest.raises(error, match="nbtunnel"):
        parse(Clock(), desc)
