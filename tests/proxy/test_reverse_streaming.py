"""Streaming through the reverse proxy: 64 MiB up and down with bounded
buffering, proved by producer pauses and transport buffer sizes (no timing)."""

from __future__ import annotations

import hashlib
import random

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPushProducer
from zope.interface import implementer

from nbgateway.proxy.reverse import ReverseProxy
from nbgateway.proxy.streaming import HIGH_WATER
from nbgateway.routes.context import RequestContext
from nbgateway.routes.paths import PathRouter, parse_target
from nbgateway.routes.service import ProxyService, TargetOptions

from ._harness import ProxyHarness, curl, listen_protocol, listen_site, wait_for

SIZE = 64 * 1024 * 1024
BLOCK = 64 * 1024


def pending_write_bytes(transport) -> int:
    """Bytes a Twisted TCP transport holds in user space, not yet sent."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


@implementer(IPushProducer)
class BigBody:
    def __init__(self, request, data: bytes) -> None:
        self.request = request
        self.data = data
        self.pos = 0
        self.paused = False
        self.pauses = 0
        self.done = False

    def pauseProducing(self) -> None:
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.pos < len(self.data):
            self.request.write(self.data[self.pos : self.pos + BLOCK])
            self.pos += BLOCK
        if self.pos >= len(self.data) and not self.done:
            self.done = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.paused = True


class BigResource(resource.Resource):
    isLeaf = True

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data
        self.body: BigBody | None = None

    def render_GET(self, request):
        request.setHeader(b"content-length", b"%d" % len(self.data))
        request.setHeader(b"content-type", b"application/octet-stream")
        self.body = BigBody(request, self.data)
        request.registerProducer(self.body, True)
        reactor.callLater(0, self.body.resumeProducing)
        return server.NOT_DONE_YET


class SlowClient(Protocol):
    """GETs one resource without reading until told to."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.buf = b""
        self.head: bytes | None = None
        self.length = 0
        self.received = 0
        self.sha = hashlib.sha256()
        self.finished = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(f"GET /big HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.head is None:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            self.head, data = self.buf.split(b"\r\n\r\n", 1)
            for line in self.head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    self.length = int(v)
        self.received += len(data)
        self.sha.update(data)
        if self.received >= self.length and not self.finished.called:
            self.finished.callback(None)


class SlowSink(Protocol):
    """A raw HTTP/1.1 upstream that reads a Content-Length body, pausing after
    ``stall_at`` bytes until released; answers with the body's sha256."""

    stall_at = 8 * 1024 * 1024

    def __init__(self) -> None:
        self.buf = b""
        self.head: bytes | None = None
        self.length = 0
        self.received = 0
        self.sha = hashlib.sha256()
        self.stalled = False

    def dataReceived(self, data: bytes) -> None:
        if self.head is None:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            self.head, data = self.buf.split(b"\r\n\r\n", 1)
            for line in self.head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    self.length = int(v)
            SlowSink.last = self
        self.received += len(data)
        self.sha.update(data)
        if self.received >= self.stall_at and not self.stalled:
            self.stalled = True
            self.transport.pauseProducing()
        if self.received >= self.length:
            digest = self.sha.hexdigest().encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(digest), digest))

    def release(self) -> None:
        self.transport.resumeProducing()


class StreamingTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.data = random.Random(6).randbytes(SIZE)
        self.h = ProxyHarness()
        self.port = self.h.listen()
        self.addCleanup(self.h.close)

    @defer.inlineCallbacks
    def test_64mib_download_with_backpressure(self):
        big = BigResource(self.data)
        up_port, _ = listen_site(big)
        self.addCleanup(up_port.stopListening)
        self.h.add("big.example", {"/": f"http://127.0.0.1:{up_port.getHost().port}/"})
        client = SlowClient("big.example")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        yield wait_for(lambda: len(self.h.site.channels) == 1 and big.body is not None)
        proxy_side = self.h.site.channels[0].transport
        # The client reads nothing: the proxy pauses the upstream body, and
        # the upstream's producer is paused in turn.
        yield wait_for(lambda: proxy_side.producerPaused and big.body.paused)
        self.assertLess(big.body.pos, SIZE)
        self.assertLessEqual(pending_write_bytes(proxy_side), 1024 * 1024)
        client.transport.resumeProducing()
        yield client.finished
        self.assertIn(b"200 OK", client.head)
        self.assertEqual(client.received, SIZE)
        self.assertEqual(client.sha.hexdigest(), hashlib.sha256(self.data).hexdigest())
        self.assertGreaterEqual(big.body.pauses, 1)
        client.transport.loseConnection()

    @defer.inlineCallbacks
    def test_64mib_upload_with_backpressure(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(self.data)
        up = listen_protocol(SlowSink)
        self.addCleanup(up.stopListening)
        self.h.add("up.example", {"/": f"http://127.0.0.1:{up.getHost().port}/"})
        done = curl("-H", "Host: up.example", "--data-binary", "@" + path,
                    "-H", "Content-Type: application/octet-stream",
                    f"http://127.0.0.1:{self.port}/upload")
        yield wait_for(lambda: self.h.requests and self.h.requests[0].body_stream is not None)
        stream = self.h.requests[0].body_stream
        yield wait_for(lambda: getattr(SlowSink, "last", None) is not None
                       and SlowSink.last.stalled and stream.pauses > 0 and stream._net_paused)
        # The upstream stopped reading; the proxy stopped reading the client.
        self.assertLess(stream.received, SIZE)
        self.assertLessEqual(stream.max_buffered, HIGH_WATER + 256 * 1024)
        SlowSink.last.release()
        status, _, body = yield done
        self.assertEqual(status, 200)
        self.assertEqual(body.decode(), hashlib.sha256(self.data).hexdigest())
        self.assertEqual(stream.received, SIZE)
        self.assertLessEqual(stream.max_buffered, HIGH_WATER + 256 * 1024)
        del SlowSink.last



class _FakeRequest:
    """Just enough of a twisted.web request for the deadline unit test."""

    def __init__(self, body) -> None:
        self.uri, self.method = b"/up", b"POST"
        self.requestHeaders = Headers({b"host": [b"u.example"]})
        self.responseHeaders = Headers()
        self.body_stream = body
        self.code = None
        self.finished = False
        self.startedWriting = False

    def getHeader(self, name):
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None

    def notifyFinish(self):
        return defer.Deferred()

    def isSecure(self):
        return False

    def getClientAddress(self):
        return IPv4Address("TCP", "127.0.0.1", 5555)

    def setResponseCode(self, code, message=None):
        self.code = code

    def setHeader(self, name, value):
        self.responseHeaders.setRawHeaders(name, [value])

    def write(self, data):
        self.startedWriting = True

    def finish(self):
        self.finished = True


class _NeverAgent:
    def __init__(self) -> None:
        self.cancelled = 0

    def request(self, method, url, headers, body):
        return defer.Deferred(lambda d: setattr(self, "cancelled", self.cancelled + 1))


class _Pools:
    def __init__(self) -> None:
        self.agent_obj = _NeverAgent()

    def agent(self, *a, **kw):
        return self.agent_obj


class DeadlineTests(unittest.SynchronousTestCase):
    def test_deadline_bounds_the_wait_without_upload_progress(self):
        """A moving upload is never cut off; once nothing moves for a whole
        request timeout, the request gets 504 and the upstream call is cancelled."""
        clock = task.Clock()
        pools = _Pools()
        proxy = ReverseProxy(clock, pools, lambda account, direct: object(), clock=clock)
        route = parse_target("/", "http://100.64.0.9:8080/", TargetOptions(request_timeout=1.0))
        service = ProxyService("acc", "u.example", PathRouter([route]))

        class Body:
            sent = 0
            length = 1 << 30

        body = Body()
        request = _FakeRequest(body)
        proxy.render(request, RequestContext(service=service))
        for _ in range(20):  # 20 s of a slow but moving upload
            body.sent += 4096
            clock.advance(0.99)
        self.assertIsNone(request.code)
        self.assertEqual(pools.agent_obj.cancelled, 0)
        # the upload stops: 504 after one to two timeouts without progress
        clock.advance(0.99)
        self.assertIsNone(request.code)
        clock.advance(1.0)
        self.assertEqual(request.code, 504)
        self.assertTrue(request.finished)
        self.assertEqual(pools.agent_obj.cancelled, 1)
        self.assertEqual(clock.getDelayedCalls(), [])
