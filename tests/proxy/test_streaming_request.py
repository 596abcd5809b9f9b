"""StreamingRequest / StreamingHTTPChannel over an in-memory transport:
bodies split at arbitrary points (hypothesis) arrive intact through the body
producer, pipelined requests after a streamed body are still parsed, and
garbage never raises out of the channel."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import resource, server

from nbgateway.proxy.streaming import STREAM_THRESHOLD, ProxySite


class Collector:
    def __init__(self) -> None:
        self.data = []

    def write(self, data: bytes) -> None:
        self.data.append(data)


class BodyEcho(resource.Resource):
    """Answers with the length and a checksum of the body it consumed."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []
        self.streamed = 0

    def render(self, request):
        stream = getattr(request, "body_stream", None)
        if stream is None:
            self._answer(request, request.content.read())
            return server.NOT_DONE_YET
        self.streamed += 1
        consumer = Collector()
        stream.startProducing(consumer).addCallback(
            lambda _: self._answer(request, b"".join(consumer.data)))
        return server.NOT_DONE_YET

    def _answer(self, request, body: bytes) -> None:
        self.bodies.append(body)
        out = b"%d" % len(body)
        request.setHeader(b"content-length", b"%d" % len(out))
        request.write(out)
        request.finish()


def connect(site):
    proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 4321))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
    proto.makeConnection(transport)
    return proto, transport


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos, i = b"", 0, 0
    while pos < len(body):
        n = max(1, sizes[i % len(sizes)]) if sizes else len(body)
        part = body[pos : pos + n]
        out += b"%x\r\n%s\r\n" % (len(part), part)
        pos += n
        i += 1
    return out + b"0\r\n\r\n"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 3 * STREAM_THRESHOLD),
    use_chunked=st.booleans(),
    chunk_sizes=st.lists(st.integers(1, 70_000), min_size=1, max_size=5).map(
        lambda xs: [max(x, 512) if i else x for i, x in enumerate(xs)]),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=12),
)
@example(size=200_000, use_chunked=False, chunk_sizes=[1], cuts=[5, 70, 100_000])
@example(size=200_000, use_chunked=True, chunk_sizes=[65_537, 3], cuts=[80, 131_000])
@example(size=STREAM_THRESHOLD + 1, use_chunked=False, chunk_sizes=[1], cuts=[])
def test_bodies_arrive_intact_and_pipelining_survives(size, use_chunked, chunk_sizes, cuts):
    body = (bytes(range(251)) * (size // 251 + 1))[:size]
    res = BodyEcho()
    site = ProxySite(res)
    proto, transport = connect(site)
    if use_chunked:
        first = (b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + chunked(body, chunk_sizes))
    else:
        first = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (size, body)
    second = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    for piece in split(first + second, cuts):
        proto.dataReceived(piece)
    assert res.bodies == [body, b""]
    out = transport.value()
    assert out.count(b"HTTP/1.1 200") == 2
    streamed_expected = use_chunked or size > STREAM_THRESHOLD
    assert res.streamed == (1 if streamed_expected else 0)
    proto.connectionLost(Failure(ConnectionDone()))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000))
def test_garbage_never_raises(data):
    site = ProxySite(BodyEcho())
    proto, transport = connect(site)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    proto.dataReceived(data)
    out = transport.value()
    # nothing, a 400 for malformed chunking, or the answer to a well-formed body
    assert out == b"" or out.startswith(b"HTTP/1.1 ")
    proto.connectionLost(Failure(ConnectionDone()))


def _clock_site(**kw):
    from twisted.internet import task

    clock = task.Clock()
    site = ProxySite(BodyEcho(), reactor=clock, **kw)
    return clock, site


def test_slowloris_head_gets_408_after_header_timeout():
    clock, site = _clock_site(header_timeout=30, timeout=90)
    proto, transport = connect(site)
    proto.dataReceived(b"GET / HTTP/1.1\r\n")
    for _ in range(29):  # one header byte per second keeps the idle timer happy
        clock.advance(1)
        proto.dataReceived(b"X")
    assert not transport.disconnecting
    clock.advance(1.5)
    assert transport.value().startswith(b"HTTP/1.1 408")
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    assert proto._head_deadline is None and proto.header_timeouts == 1


def test_complete_heads_are_not_timed_out_and_idle_timeout_applies():
    clock, site = _clock_site(header_timeout=30, timeout=90)
    proto, transport = connect(site)
    proto.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().count(b"HTTP/1.1 200") == 1
    clock.advance(60)  # idle keep-alive: no head deadline running
    assert not transport.disconnecting
    proto.dataReceived(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().count(b"HTTP/1.1 200") == 2
    clock.advance(91)  # the idle timeout closes a silent keep-alive connection
    assert transport.disconnecting
    assert b"408" not in transport.value()
    proto.connectionLost(Failure(ConnectionDone()))


def test_streamed_body_is_not_subject_to_the_head_deadline():
    clock, site = _clock_site(header_timeout=5, timeout=90)
    proto, transport = connect(site)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(20):
        clock.advance(1)
        proto.dataReceived(b"1\r\nz\r\n")
    proto.dataReceived(b"0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200")
    assert b"\r\n\r\n20" in transport.value()
    proto.connectionLost(Failure(ConnectionDone()))
