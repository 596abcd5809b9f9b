"""The request path's objects and values made inline (round 9's general
savings): each equals what the general code it stands in for gives.

- ``exchange.new_exchange`` and ``LeanAgent.send_head``'s attempt: the
  instance state of ``_Exchange(...)`` and ``_Attempt(...)``;
- the exchange's inline status of a fast-path request:
  ``FastRequest.setResponseCode``'s status line;
- ``FastRequest.peer_ip`` (made once per connection): the address
  ``getClientAddress`` gives;
- ``fast_done``'s inline ``resetTimeout``: the idle timer restarts when a
  response finishes."""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from nbgateway.proxy.fast import FastHTTPChannel
from nbgateway.proxy.streaming import ProxySite
from tests.proxy.test_lean_path import GET, Path


class _Recording(resource.Resource):
    """A fast-path resource keeping each request's peer_ip and client address;
    with ``hold``, it answers later (``finish_all``)."""

    isLeaf = True
    fast_protocol = FastHTTPChannel

    def __init__(self, hold: bool = False) -> None:
        super().__init__()
        self.hold = hold
        self.peers: list[tuple[Any, str]] = []
        self.held: list[Any] = []

    def fast_route(self, host: bytes) -> Any:
        return ("x", None)

    def render(self, request: Any) -> Any:
        self.peers.append((request.peer_ip, str(request.getClientAddress().host)))
        if self.hold:
            self.held.append(request)
            return server.NOT_DONE_YET
        return b"ok"


def _channel(res: _Recording, peer: Any, clock: task.Clock | None = None,
             timeout: float | None = 90.0) -> tuple[Any, StringTransport]:
    site = ProxySite(res, reactor=clock or task.Clock(), fast=True, timeout=timeout)
    channel = site.buildProtocol(peer)
    client = StringTransport(peerAddress=peer)
    channel.makeConnection(client)
    return channel, client


def test_peer_ip_is_the_client_address_getclientaddress_gives():
    head = b"GET /a HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
    for peer in (IPv4Address("TCP", "100.64.0.10", 1), IPv6Address("TCP", "fd00::7", 2)):
        res = _Recording()
        channel, client = _channel(res, peer)
        for _ in range(3):
            channel.dataReceived(head)
        assert channel.fast_requests == 3
        assert client.value().count(b"HTTP/1.1 200 OK\r\n") == 3
        assert res.peers == [(peer.host, peer.host)] * 3


def test_a_finished_response_restarts_the_idle_timer():
    """fast_done resets the idle timer as TimeoutMixin.resetTimeout does:
    the connection is idle from the end of the response, not from its head."""
    clock = task.Clock()
    res = _Recording(hold=True)
    channel, client = _channel(res, IPv4Address("TCP", "100.64.0.10", 1), clock, timeout=10.0)
    channel.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(8)
    req = res.held.pop()
    req.write(b"ok")
    req.finish()
    assert client.value().startswith(b"HTTP/1.1 200 OK\r\n")
    clock.advance(8)  # 16 s after the head, 8 s after the response
    assert not client.disconnecting
    clock.advance(2.5)
    assert client.disconnecting


def test_the_status_line_is_what_set_response_code_makes():
    """The exchange sets a fast-path request's status inline: the client's
    status line is FastRequest.setResponseCode's (an empty or missing reason
    phrase becomes twisted.web's, or "Unknown Status")."""
    from nbgateway.proxy.fast_request import FastRequest

    for status_line in (b"HTTP/1.1 404 \r\n", b"HTTP/1.1 599 \r\n", b"HTTP/1.1 201 Made\r\n",
                        b"HTTP/1.1 200 OK\r\n"):
        code = int(status_line.split()[1])
        phrase = status_line[13:-2]
        path = Path()
        _sent, got = path.exchange(GET, status_line + b"Content-Length: 2\r\n\r\nok")
        reference = FastRequest.__new__(FastRequest)
        reference.setResponseCode(code, phrase or None)
        assert got.startswith(b"HTTP/1.1 %d %s\r\n" % (code, reference.code_message)), got


def test_new_exchange_and_send_heads_attempt_are_the_constructors():
    """exchange.new_exchange and LeanAgent.send_head's attempt have the
    instance state their constructors give."""
    from twisted.internet.defer import Deferred

    from nbgateway.dial.http11 import ConnectionPool, LeanAgent, _Attempt
    from nbgateway.proxy.exchange import _BytesProducer, _Exchange, new_exchange
    from nbgateway.routes.context import RequestContext

    ctx = RequestContext(identity=object())
    args = (object(), object(), ctx, object(), object(), object(), None, None, ("/p", "q=1"))
    assert vars(new_exchange(*args)) == vars(_Exchange(*args))

    agent = LeanAgent(ConnectionPool(task.Clock(), 4, 90.0), lambda *a: None)
    agent.pool.take = lambda key: None  # nothing pooled: the attempt dials
    key = (b"http", b"127.0.0.1", 8081)
    for method, body, sink in ((b"GET", None, object()), (b"POST", _BytesProducer(b"x"), object()),
                               (b"POST", object(), object()), (b"GET", None, None)):
        made: list[Any] = []
        real_dial = _Attempt._dial

        def fake_dial(self: Any, _made: list[Any] = made) -> None:
            _made.append(self)

        _Attempt._dial = fake_dial  # type: ignore[method-assign]
        try:
            agent.send_head(method, key, b"HEAD\r\n\r\n", body, sink)
        finally:
            _Attempt._dial = real_dial  # type: ignore[method-assign]
        want = _Attempt(agent, key, method, b"HEAD\r\n\r\n", body,
                        body is None or isinstance(getattr(body, "body", None), bytes), sink)
        got = vars(made[0])
        expected = vars(want)
        if sink is None:  # a Deferred of its own each
            assert isinstance(got.pop("result"), Deferred)
            expected = {k: v for k, v in expected.items() if k != "result"}
        assert got == expected, method
