"""The smallest Python/Twisted reverse proxies, for ``bench/python_ceiling.py``.

Not part of the gateway: these are the floor under any HTTP proxy written in
Python on Twisted, with kernel TCP on both sides (the WireGuard tunnel in front
is wireguard-go's, on the other core).  Two kinds:

* ``raw``: every client connection gets its own upstream connection, and bytes
  are relayed both ways unparsed (``transport.write``).  What Twisted's reactor
  and one socket write + read per direction cost, with no HTTP work at all.
* ``http``: the same connection pairing, but requests and responses are parsed
  with httptools (llhttp), the request head is rebuilt with one identity header
  stamped (and the client's copy dropped), and the response is relayed once
  complete (Content-Length framed).  The least an HTTP proxy that stamps
  identity has to do; no routing, auth, timeouts or access log.

``bench/_floor/sitecustomize.py`` puts the ``http`` kind behind the gateway's
own WireGuard and netstack instead (``bench/gateway.py --floor``).

Run: python bench/_ceiling_proxy.py --listen 100.64.0.2:8090 --upstream
127.0.0.1:8081 --mode raw|http [--reuseport]  (``--reuseport``: the listening
socket sets SO_REUSEPORT, so several processes can share the port).
"""

from __future__ import annotations

import argparse
import socket

import httptools
from twisted.internet import protocol

IDENTITY = b"x-netbird-user"


class Upstream(protocol.Protocol):
    """The upstream side of one client connection."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def connectionMade(self) -> None:
        self.client.upstream_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.client.from_upstream(data)

    def connectionLost(self, reason: object = None) -> None:
        self.client.transport.loseConnection()


class Client(protocol.Protocol):
    """One client connection and its upstream connection (``raw`` mode)."""

    def __init__(self, factory: ClientFactory) -> None:
        self.factory = factory
        self.up: Upstream | None = None
        self.pending: list[bytes] = []

    def connectionMade(self) -> None:
        from twisted.internet import reactor

        host, port = self.factory.upstream
        protocol.ClientCreator(reactor, Upstream, self).connectTCP(host, port)

    def upstream_ready(self, up: Upstream) -> None:
        self.up = up
        for chunk in self.pending:
            up.transport.write(chunk)
        self.pending = []

    def to_upstream(self, data: bytes) -> None:
        if self.up is None:
            self.pending.append(data)
        else:
            self.up.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.to_upstream(data)

    def from_upstream(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        if self.up is not None:
            self.up.transport.loseConnection()


class _ResponseSide:
    """httptools callbacks of the response parser (a separate object: the
    request parser calls the same method names)."""

    def __init__(self, client: HTTPClient) -> None:
        self.client = client

    def on_message_complete(self) -> None:
        self.client.response_complete()


class HTTPClient(Client):
    """``http`` mode: parse, stamp, relay whole responses."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.req = httptools.HttpRequestParser(self)
        self.resp = httptools.HttpResponseParser(_ResponseSide(self))
        self.head: list[bytes] = []
        self.url = b""
        self.out: list[bytes] = []

    # request parser callbacks
    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() != IDENTITY:
            self.head.append(name + b": " + value)

    def on_headers_complete(self) -> None:
        method = self.req.get_method()
        lines = [method + b" " + self.url + b" HTTP/1.1", *self.head,
                 b"X-NetBird-User: alice", b"", b""]
        self.head = []
        self.to_upstream(b"\r\n".join(lines))

    def on_body(self, body: bytes) -> None:
        self.to_upstream(body)

    def dataReceived(self, data: bytes) -> None:
        try:
            self.req.feed_data(data)
        except httptools.HttpParserError:
            self.transport.loseConnection()

    def from_upstream(self, data: bytes) -> None:
        self.out.append(data)
        try:
            self.resp.feed_data(data)
        except httptools.HttpParserError:
            self.transport.loseConnection()

    def response_complete(self) -> None:
        """A whole response arrived: relay it in one write."""
        self.transport.write(b"".join(self.out))
        self.out = []


class ClientFactory(protocol.Factory):
    def __init__(self, mode: str, upstream: tuple[str, int]) -> None:
        self.protocol_class = HTTPClient if mode == "http" else Client
        self.upstream = upstream

    def buildProtocol(self, addr: object) -> Client:
        p = self.protocol_class(self)
        p.factory = self
        return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--mode", choices=("raw", "http"), default="http")
    ap.add_argument("--reuseport", action="store_true")
    a = ap.parse_args()
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    lhost, lport = a.listen.rsplit(":", 1)
    uhost, uport = a.upstream.rsplit(":", 1)
    factory = ClientFactory(a.mode, (uhost, int(uport)))
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if a.reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((lhost, int(lport)))
    s.listen(1024)
    s.setblocking(False)
    reactor.adoptStreamPort(s.fileno(), socket.AF_INET, factory)
    s.close()
    reactor.run()


if __name__ == "__main__":
    main()
