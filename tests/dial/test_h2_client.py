"""The upstream HTTP/2 client (nbgateway.dial.h2) against a real grpcio
server: h2c prior knowledge and ALPN h2 over TLS, response trailers, server
streaming delivered as it comes, receive-window backpressure, RST on
cancel, pooling (one connection, many streams), ALPN refusal."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial import unittest

from nbgateway.dial.direct import DirectDialer
from nbgateway.dial.h2 import H2NotNegotiatedError, H2Pools
from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import ClientTLSPolicy, server_tls_factory
from tests.proxy._grpc import SERVICE, EchoGrpc, grpc_frame, grpc_messages, leaf_pems
from tests.proxy._harness import EchoUpstream, RecordingSite, wait_for


class _Bytes:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Any:
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.trailer_list: list[tuple[bytes, bytes]] = []
        self.done: defer.Deferred[Any] = defer.Deferred()

    def data(self, data: bytes) -> None:
        self.chunks.append(data)

    def trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.trailer_list = trailers

    def ended(self) -> None:
        self.done.callback(self)

    def failed(self, reason: Any) -> None:
        self.done.errback(reason)


def _head(method: str, authority: str, scheme: str = "http",
          extra: tuple[tuple[bytes, bytes], ...] = ()) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), (b":scheme", scheme.encode()),
            (b":authority", authority.encode()), (b":path", f"/{SERVICE}/{method}".encode()),
            (b"content-type", b"application/grpc"), (b"te", b"trailers"), *extra]


def _tcp(host: str, port: int, timeout: float) -> Any:
    return TCP4ClientEndpoint(reactor, host, port, timeout=timeout)


class PlainDialer:
    endpoint = staticmethod(_tcp)


class H2ClientTests(unittest.TestCase):
    def setUp(self) -> None:
        self.grpc = EchoGrpc()
        self.addCleanup(self.grpc.stop)
        self.pools = H2Pools(reactor)
        self.addCleanup(self.pools.close)
        self.dialer = PlainDialer()

    def conn(self, port: int | None = None, **kw: Any) -> defer.Deferred[Any]:
        args = {"direct": False, "skip_verify": False, "tls": False, "host": "127.0.0.1",
                "port": port or self.grpc.port, "timeout": 5.0}
        args.update(kw)
        dialer = args.pop("dialer", self.dialer)
        return self.pools.connection("acc1", dialer, **args)

    @defer.inlineCallbacks
    def call(self, method: str, body: bytes, **kw: Any) -> Any:
        conn = yield self.conn(**kw)
        st = conn.request(_head(method, "svc.example", extra=((b"x-req", b"r1"),)),
                          _Bytes(grpc_frame(body)))
        status, headers = yield st.response
        sink = Sink()
        st.read(sink)
        yield sink.done
        return status, dict(headers), sink, st

    @defer.inlineCallbacks
    def test_unary_h2c_trailers_and_metadata(self):
        status, headers, sink, _st = yield self.call("Unary", b"ping")
        self.assertEqual(status, 200)
        self.assertEqual(headers[b"content-type"], b"application/grpc")
        self.assertEqual(headers[b"x-initial"], b"hello")
        self.assertEqual(grpc_messages(b"".join(sink.chunks)), [b"echo:ping"])
        trailers = dict(sink.trailer_list)
        self.assertEqual(trailers[b"grpc-status"], b"0")
        self.assertEqual(trailers[b"x-trailing"], b"bye")
        self.assertIn(b"x-trail-bin", trailers)
        self.assertEqual(self.grpc.metadata[-1]["x-req"], "r1")

    @defer.inlineCallbacks
    def test_streams_share_one_pooled_connection(self):
        results = yield defer.gatherResults([self.call("Unary", b"n%d" % i) for i in range(10)])
        self.assertEqual(sorted(grpc_messages(b"".join(r[2].chunks))[0] for r in results),
                         sorted(b"echo:n%d" % i for i in range(10)))
        yield self.call("Unary", b"again")
        self.assertEqual(self.pools.dials, 1)
        self.assertEqual(self.pools.open_connections(), 1)
        self.assertEqual(self.pools.open_connections("other"), 0)

    @defer.inlineCallbacks
    def test_trailers_only_error(self):
        status, headers, sink, _ = yield self.call("Fail", b"x")
        self.assertEqual(status, 200)
        # a trailers-only answer: the status is in the (only) header block
        self.assertEqual(headers[b"grpc-status"], b"7")
        self.assertEqual(headers[b"grpc-message"], b"nope: denied")
        self.assertEqual(headers[b"x-why"], b"because")
        self.assertEqual(sink.chunks, [])

    @defer.inlineCallbacks
    def test_server_stream_arrives_as_it_is_produced_and_cancel_resets(self):
        conn = yield self.conn()
        st = conn.request(_head("Stream", "svc.example"), _Bytes(grpc_frame(b"5")))
        yield st.response
        sink = Sink()
        st.read(sink)
        yield wait_for(lambda: b"".join(sink.chunks).endswith(b"msg0"), timeout=10)
        # msg0 arrived while the server is still blocked before msg1
        self.assertFalse(self.grpc.release.is_set())
        st.cancel()  # RST_STREAM(CANCEL)
        yield self.assertFailure(sink.done, Exception)
        yield wait_for(self.grpc.cancelled.is_set, timeout=10)
        self.assertEqual(conn.streams, {})
        # the connection stays usable for the next stream
        status, _h, _sink2, _ = yield self.call("Unary", b"after")
        self.assertEqual(status, 200)
        self.assertEqual(self.pools.dials, 1)

    @defer.inlineCallbacks
    def test_paused_reader_holds_the_receive_window(self):
        conn = yield self.conn()
        big = b"x" * (1024 * 1024)
        # Upload echoes the total; use a large request to exercise send windows
        st = conn.request(_head("Upload", "svc.example"),
                          _Bytes(b"".join(grpc_frame(big) for _ in range(3))))
        status, _ = yield st.response
        sink = Sink()
        st.read(sink)
        yield sink.done
        self.assertEqual(status, 200)
        self.assertEqual(grpc_messages(b"".join(sink.chunks)), [str(3 * len(big)).encode()])
        self.assertEqual(st.sent, 3 * (len(big) + 5))

    @defer.inlineCallbacks
    def test_paused_stream_does_not_acknowledge(self):
        conn = yield self.conn()
        st = conn.request(_head("Stream", "svc.example"), _Bytes(grpc_frame(b"3")))
        yield st.response
        st.pause()
        sink = Sink()
        st.read(sink)
        # msg0 arrives (the server then blocks): delivered, but not acknowledged
        yield wait_for(lambda: b"".join(sink.chunks).endswith(b"msg0"), timeout=10)
        self.assertEqual(st._unacked, len(grpc_frame(b"msg0")))
        st.resume()
        self.assertEqual(st._unacked, 0)
        self.grpc.release.set()
        yield sink.done
        self.assertEqual(grpc_messages(b"".join(sink.chunks)), [b"msg0", b"msg1", b"msg2"])

    @defer.inlineCallbacks
    def test_direct_dial_guard_applies(self):
        from nbgateway.dial import DirectUpstreamDeniedError
        from nbgateway.dial.guard import DialPolicy, parse_allow_list

        # loopback needs an explicit entry for the account: "friend" only
        policy = DialPolicy(parse_allow_list("127.0.0.1/32@friend"))
        guarded = DirectDialer(reactor, policy=policy)
        d = self.conn(dialer=guarded.for_account("acc1"), direct=True)
        yield self.assertFailure(d, DirectUpstreamDeniedError)
        conn = yield self.conn(dialer=guarded.for_account("friend"), direct=True)
        self.assertTrue(conn.available)


class H2PoolIdleTests(unittest.TestCase):
    """Idle connections close after ``idle_timeout`` on the pool's clock,
    also one whose only waiter gave up before it was ready."""

    def setUp(self) -> None:
        self.grpc = EchoGrpc()
        self.addCleanup(self.grpc.stop)
        self.clock = task.Clock()
        self.pools = H2Pools(reactor, clock=self.clock, idle_timeout=30.0)
        self.addCleanup(self.pools.close)

    def conn(self) -> defer.Deferred[Any]:
        return self.pools.connection("acc1", PlainDialer(), direct=False, skip_verify=False,
                                     tls=False, host="127.0.0.1", port=self.grpc.port,
                                     timeout=5.0)

    @defer.inlineCallbacks
    def test_unused_connection_of_a_cancelled_wait_closes_when_idle(self):
        d = self.conn()
        d.cancel()  # the request gave up while the connection was being made
        yield self.assertFailure(d, defer.CancelledError)
        yield wait_for(lambda: self.pools.open_connections() == 1, timeout=10)
        self.clock.advance(29)
        self.assertEqual(self.pools.open_connections(), 1)
        self.clock.advance(2)
        yield wait_for(lambda: self.pools.open_connections() == 0, timeout=10)

    @defer.inlineCallbacks
    def test_connection_idle_after_its_last_stream(self):
        conn = yield self.conn()
        st = conn.request(_head("Unary", "svc.example"), _Bytes(grpc_frame(b"x")))
        yield st.response
        sink = Sink()
        st.read(sink)
        yield sink.done
        yield wait_for(lambda: len(self.clock.getDelayedCalls()) == 1, timeout=10)
        # reused before the idle close: the timer is cancelled
        again = yield self.conn()
        self.assertIs(again, conn)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])


class H2TLSTests(unittest.TestCase):
    def setUp(self) -> None:
        tmp = self.mktemp()
        self.store = CertificateStore(None, None, tmp + "/data")
        self.store.reload()
        with open(self.store.ca.cert_path, "rb") as f:
            self.ca_pem = f.read()
        self.grpc = EchoGrpc(tls=leaf_pems(self.store.ca, "localhost"))
        self.addCleanup(self.grpc.stop)
        self.pools = H2Pools(reactor, tls_creator=ClientTLSPolicy(self.ca_pem))
        self.addCleanup(self.pools.close)

    @defer.inlineCallbacks
    def test_alpn_h2_verified(self):
        conn = yield self.pools.connection("acc1", PlainDialer(), direct=False,
                                           skip_verify=False, tls=True, host="localhost",
                                           port=self.grpc.port, timeout=5.0)
        self.assertEqual(conn.transport.negotiatedProtocol, b"h2")
        st = conn.request(_head("Unary", "localhost", "https"), _Bytes(grpc_frame(b"tls")))
        status, _ = yield st.response
        sink = Sink()
        st.read(sink)
        yield sink.done
        self.assertEqual(status, 200)
        self.assertEqual(grpc_messages(b"".join(sink.chunks)), [b"echo:tls"])
        self.assertEqual(dict(sink.trailer_list)[b"grpc-status"], b"0")

    @defer.inlineCallbacks
    def test_skip_tls_verify_still_offers_h2(self):
        pools = H2Pools(reactor, tls_creator=ClientTLSPolicy(None))  # CA not trusted
        self.addCleanup(pools.close)
        conn = yield pools.connection("acc1", PlainDialer(), direct=False, skip_verify=True,
                                      tls=True, host="localhost", port=self.grpc.port,
                                      timeout=5.0)
        self.assertEqual(conn.transport.negotiatedProtocol, b"h2")
        st = conn.request(_head("Unary", "localhost", "https"), _Bytes(grpc_frame(b"k")))
        status, _ = yield st.response
        self.assertEqual(status, 200)
        sink = Sink()
        st.read(sink)
        yield sink.done
        self.assertEqual(grpc_messages(b"".join(sink.chunks)), [b"echo:k"])

    @defer.inlineCallbacks
    def test_untrusted_certificate_fails(self):
        pools = H2Pools(reactor, tls_creator=ClientTLSPolicy(None))
        self.addCleanup(pools.close)
        d = pools.connection("acc1", PlainDialer(), direct=False, skip_verify=False, tls=True,
                             host="localhost", port=self.grpc.port, timeout=5.0)
        yield self.assertFailure(d, Exception)

    @defer.inlineCallbacks
    def test_upstream_without_h2_alpn_is_refused(self):
        # an HTTP/1.1-only TLS server: ALPN answers http/1.1 (or nothing)
        site = RecordingSite(EchoUpstream())
        port = reactor.listenTCP(0, server_tls_factory(self.store, site), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        import nbgateway.tls.contexts as contexts

        if b"h2" in contexts.SERVER_ALPN_PROTOCOLS:
            self.patch(contexts, "SERVER_ALPN_PROTOCOLS", (b"http/1.1",))
        d = self.pools.connection("acc1", PlainDialer(), direct=False, skip_verify=False,
                                  tls=True, host="localhost", port=port.getHost().port,
                                  timeout=5.0)
        yield self.assertFailure(d, H2NotNegotiatedError)
