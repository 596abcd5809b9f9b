"""nbgateway.proxy.h2_stream.GatewayH2Stream against Twisted's H2Stream: the
same request head (header dict with its canonical names and order, method,
path, length, cookies, 100-continue) from the same received block, the same
error for an invalid name, and Twisted's own conversion when the
connection does not validate inbound values."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.web import http
from twisted.web._http2 import H2Stream
from twisted.web.http_headers import InvalidHeaderName

from nbgateway.proxy.h2_stream import GatewayH2Stream
from nbgateway.proxy.h2trailers import TrailersH2Connection


class _Conn:
    def __init__(self, validate: bool = True) -> None:
        self.conn = SimpleNamespace(config=SimpleNamespace(validate_inbound_headers=validate))
        self.continued: list[int] = []

    def _send100Continue(self, stream_id: int) -> None:
        self.continued.append(stream_id)

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None

    def _isSecure(self) -> bool:
        return True


class _Request(http.Request):
    def __init__(self, channel: Any, queued: Any = None) -> None:
        super().__init__(channel)
        self.lengths: list[int | None] = []

    def gotLength(self, length: int | None) -> None:
        self.lengths.append(length)
        super().gotLength(length)


def _head(cls: type, headers: list[tuple[bytes, bytes]], validate: bool = True) -> Any:
    conn = _Conn(validate)
    stream = cls(7, conn, headers, _Request, None, None)
    request = stream._request
    return (list(request.requestHeaders._rawHeaders.items()), stream.command, stream.path,
            request.lengths, request.received_cookies, conn.continued)


NAMES = [b"accept", b"user-agent", b"cookie", b"content-length", b"expect", b"x-a",
         b"sec-ch-ua", b"www-authenticate", b"te", b"x-forwarded-for", b"host",
         b"content-type", b"p3p", b"x-xss-protection"]
VALUES = [b"", b"1", b"100-continue", b"100-Continue", b"a=1; b=2", b"a", b"x" * 50,
          b"\xff\x80 bytes"]


@pytest.mark.parametrize("seed", range(8))
def test_same_head_as_twisted(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        headers = [(b":method", rng.choice((b"GET", b"HEAD", b"POST", b"PUT"))),
                   (b":scheme", b"https"), (b":path", b"/p%d?q" % rng.randrange(9))]
        if rng.random() < 0.8:
            headers.insert(rng.randrange(len(headers) + 1),
                           (b":authority", b"app.example"))
        for _ in range(rng.randrange(0, 14)):
            name = rng.choice(NAMES) if rng.random() < 0.85 else b"x-n%d" % rng.randrange(4)
            value = (b"%d" % rng.randrange(100) if name == b"content-length"
                     else rng.choice(VALUES))
            if name == b"content-length" and any(n == name for n, _ in headers):
                continue  # h2 refuses differing lengths before the stream sees them
            headers.append((name, value))
        assert _head(GatewayH2Stream, headers) == _head(H2Stream, headers)


def test_invalid_name_same_error() -> None:
    headers = [(b":method", b"GET"), (b":path", b"/"), (b"bad(name", b"1")]
    with pytest.raises(InvalidHeaderName):
        _head(H2Stream, headers)
    with pytest.raises(InvalidHeaderName):
        _head(GatewayH2Stream, headers)


def test_unvalidated_values_are_twisteds() -> None:
    """A connection not validating inbound values: Twisted folds CR/LF."""
    headers = [(b":method", b"GET"), (b":path", b"/"), (b"x-a", b"one\r\ntwo")]
    got = _head(GatewayH2Stream, headers, validate=False)
    assert got == _head(H2Stream, headers, validate=False)
    assert got[0] == [(b"X-A", [b"one two"])]


def test_gateway_connection_streams_are_gateway_streams() -> None:
    import h2.config
    import h2.connection
    from twisted.internet.task import Clock
    from twisted.test.proto_helpers import StringTransport
    from twisted.web.server import Site
    from twisted.web.static import Data

    conn = TrailersH2Connection(Clock())
    conn.requestFactory = Site(Data(b"ok", "text/plain")).requestFactory
    conn.site = Site(Data(b"ok", "text/plain"))
    conn.makeConnection(StringTransport())
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":path", "/"),
                            (":authority", "a.example"), ("content-length", "3")])
    conn.dataReceived(client.data_to_send())
    stream = conn.streams[1]
    assert type(stream) is GatewayH2Stream
    assert stream.command == b"POST"
    assert stream._request.requestHeaders.getRawHeaders(b"host") == [b"a.example"]
    assert stream._request.requestHeaders.getRawHeaders(b"content-length") == [b"3"]
