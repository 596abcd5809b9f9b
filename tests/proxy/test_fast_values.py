"""Values the fast path makes once, and what the exchange sets per request:

- ``FastRequest.peer_ip`` (made once per connection): the address
  ``getClientAddress`` gives;
- the client's status line is ``FastRequest.setResponseCode``'s;
- the idle timer restarts when a response finishes."""

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
