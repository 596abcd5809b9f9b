"""gRPC through the gateway: a grpcio client -> the gateway's TLS listener
(ALPN h2, trusting the gateway's local CA) -> the reverse proxy with
``upstream_protocol: h2`` -> a grpcio server (h2c, and TLS with ALPN h2).
Unary and server-streaming calls; request metadata (and the gateway's
identity headers) reach the upstream; response metadata, trailing metadata,
error statuses with details (trailers-only and after headers) reach the
client; a cancelled stream is reset upstream; a large client-streaming
upload goes through flow control."""

from __future__ import annotations

import threading
from typing import Any

import grpc
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from nbgateway.dial.pool import UpstreamPools
from nbgateway.routes.identity import Identity
from nbgateway.routes.service import TargetOptions
from nbgateway.tls.certstore import CertificateStore
from nbgateway.tls.contexts import ClientTLSPolicy, server_tls_factory

from ._grpc import EchoGrpc, leaf_pems, method, tls_channel
from ._harness import ProxyHarness, wait_for

H2_DIRECT = TargetOptions(direct_upstream=True, upstream_protocol="h2")


class GatewayGrpcTests(unittest.TestCase):
    upstream_tls = False

    def setUp(self) -> None:
        tmp = self.mktemp()
        self.store = CertificateStore(None, None, tmp + "/data")
        self.store.reload()
        with open(self.store.ca.cert_path, "rb") as f:
            self.ca_pem = f.read()
        tls = leaf_pems(self.store.ca, "localhost") if self.upstream_tls else None
        self.grpc = EchoGrpc(tls=tls)
        self.addCleanup(self.grpc.stop)
        self.h = ProxyHarness()
        self.h.pools = UpstreamPools(reactor, tls_creator=ClientTLSPolicy(self.ca_pem))
        self.h.proxy.pools = self.h.pools
        self.port = reactor.listenTCP(0, server_tls_factory(self.store, self.h.site),
                                      interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.h.close)
        self.addCleanup(lambda: self.h.proxy.h2 and self.h.proxy.h2.close())
        scheme, host = ("https", "localhost") if self.upstream_tls else ("http", "127.0.0.1")
        self.h.add("app.example", {"/": f"{scheme}://{host}:{self.grpc.port}/"}, opts=H2_DIRECT)
        self.channel = tls_channel(self.port.getHost().port, self.ca_pem, "app.example")
        self.addCleanup(self.channel.close)

    def in_thread(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        return threads.deferToThread(fn, *args)

    def error_of(self, name: str) -> defer.Deferred[grpc.RpcError | None]:
        """The RpcError a unary call of *name* (with ``b"x"``) ends in, or None."""
        call = method(self.channel, name)

        def run() -> grpc.RpcError | None:
            try:
                call(b"x", timeout=10)
            except grpc.RpcError as exc:
                return exc
            return None

        return self.in_thread(run)

    @defer.inlineCallbacks
    def test_unary_metadata_and_trailers(self):
        self.h.identity = Identity("u1", "alice@x", ("g1",), ("eng",), "oidc")
        call = method(self.channel, "Unary")

        def run() -> Any:
            return call.with_call(b"ping", metadata=(("x-req", "r1"),
                                                     ("x-netbird-user", "mallory")), timeout=10)

        reply, info = yield self.in_thread(run)
        self.assertEqual(reply, b"echo:ping")
        self.assertEqual(info.code(), grpc.StatusCode.OK)
        self.assertIn(("x-initial", "hello"), info.initial_metadata())
        trailing = dict(info.trailing_metadata())
        self.assertEqual(trailing["x-trailing"], "bye")
        self.assertEqual(trailing["x-trail-bin"], b"\x00\x01\xff")
        seen = self.grpc.metadata[-1]
        self.assertEqual(seen["x-req"], "r1")
        self.assertEqual(seen["x-netbird-user"], "alice@x")  # stamped, spoof removed
        self.assertEqual(seen["x-forwarded-proto"], "https")
        self.assertEqual(self.h.requests[-1].clientproto, b"HTTP/2")

    @defer.inlineCallbacks
    def test_error_status_trailers_only(self):
        exc = yield self.error_of("Fail")
        self.assertIsNotNone(exc)
        self.assertEqual(exc.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(exc.details(), "nope: denied")
        self.assertEqual(dict(exc.trailing_metadata())["x-why"], "because")

    @defer.inlineCallbacks
    def test_error_status_after_headers(self):
        exc = yield self.error_of("FailLate")
        self.assertIsNotNone(exc)
        self.assertEqual(exc.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(exc.details(), "too much")
        self.assertIn(("x-initial", "late"), exc.initial_metadata())
        self.assertEqual(dict(exc.trailing_metadata())["x-why"], "late")

    @defer.inlineCallbacks
    def test_server_streaming_delivered_as_produced(self):
        call = method(self.channel, "Stream", "unary_stream")
        first_before_release = threading.Event()

        def run() -> Any:
            it = call(b"4", metadata=(("x-req", "s1"),), timeout=15)
            got = []
            for msg in it:
                if not got and not self.grpc.release.is_set():
                    first_before_release.set()
                    self.grpc.release.set()
                got.append(msg)
            return got, it.trailing_metadata(), it.code()

        got, trailing, code = yield self.in_thread(run)
        self.assertTrue(first_before_release.is_set())  # msg0 came before msg1 was made
        self.assertEqual(got, [b"msg0", b"msg1", b"msg2", b"msg3"])
        self.assertEqual(code, grpc.StatusCode.OK)
        self.assertEqual(dict(trailing)["x-count"], "4")
        self.assertEqual(self.grpc.metadata[-1]["x-req"], "s1")

    @defer.inlineCallbacks
    def test_client_cancel_resets_the_upstream_stream(self):
        call = method(self.channel, "Stream", "unary_stream")

        def run() -> Any:
            it = call(b"3", timeout=15)
            first = next(it)
            it.cancel()
            return first

        first = yield self.in_thread(run)
        self.assertEqual(first, b"msg0")
        yield wait_for(self.grpc.cancelled.is_set, timeout=10)
        relay = self.h.proxy.h2
        yield wait_for(lambda: all(not c.streams for e in relay.pools._hosts.values()
                                   for c in e.conns), timeout=10)

    @defer.inlineCallbacks
    def test_slow_reader_bounds_what_waits_in_the_gateway(self):
        """A 16 MiB server stream to a client reading slowly: the response
        bytes queued on the client's stream stay within the 256 KiB mark plus
        one upstream stream window (what the upstream may still send after
        the gateway stopped acknowledging), although the client's own window
        is larger; everything arrives."""
        import time

        from nbgateway.proxy import h2trailers

        peak = [0]
        original = h2trailers.TrailersH2Connection.writeDataToStream

        def recording(conn: Any, stream_id: int, data: bytes) -> None:
            original(conn, stream_id, data)
            peak[0] = max(peak[0], conn.conn.queued.get(stream_id, 0))

        self.patch(h2trailers.TrailersH2Connection, "writeDataToStream", recording)
        call = method(self.channel, "Big", "unary_stream")

        def run() -> Any:
            total = 0
            for i, msg in enumerate(call(b"1024", timeout=60)):
                total += len(msg)
                if i % 64 == 0:
                    time.sleep(0.02)
            return total

        total = yield self.in_thread(run)
        self.assertEqual(total, 1024 * 16384)
        self.assertGreater(peak[0], 0)
        # paused at the high mark; what the upstream had window for still comes
        from nbgateway.dial.h2 import STREAM_WINDOW

        self.assertLessEqual(peak[0], h2trailers.STREAM_QUEUE_HIGH + STREAM_WINDOW + 2 * 16384)

    @defer.inlineCallbacks
    def test_bidirectional_call_where_the_server_speaks_first(self):
        call = method(self.channel, "Chat", "stream_stream")
        heard = threading.Event()

        def requests() -> Any:
            # nothing is sent until the server's greeting came through
            if not heard.wait(10):
                return
            yield b"a"
            yield b"b"

        def run() -> Any:
            got = []
            for msg in call(requests(), timeout=15):
                got.append(msg)
                heard.set()
            return got

        got = yield self.in_thread(run)
        self.assertEqual(got, [b"hello", b"re:a", b"re:b"])

    @defer.inlineCallbacks
    def test_concurrent_large_streams_on_one_connection_arrive_whole(self):
        """Three 4 MiB server streams at once on the client's one HTTP/2
        connection (frames of several streams batched per reactor turn)."""
        call = method(self.channel, "Big", "unary_stream")

        def run() -> Any:
            msgs = list(call(b"256", timeout=60))
            return len(msgs), sum(len(m) for m in msgs), all(m == b"b" * 16384 for m in msgs)

        results = yield defer.gatherResults([self.in_thread(run) for _ in range(3)])
        self.assertEqual(results, [(256, 256 * 16384, True)] * 3)
        self.assertEqual(len(self.h.site.channels), 1)

    @defer.inlineCallbacks
    def test_metrics_of_the_h2_pools(self):
        from prometheus_client import CollectorRegistry, generate_latest

        from nbgateway.proxy.h2relay import H2RelayMetrics

        registry = CollectorRegistry()
        registry.register(H2RelayMetrics(self.h.proxy))
        before = generate_latest(registry).decode()
        self.assertIn("nbgateway_upstream_h2_connections 0.0", before)  # no relay yet
        call = method(self.channel, "Unary")
        yield self.in_thread(lambda: [call(b"m", timeout=10) for _ in range(3)])
        text = generate_latest(registry).decode()
        self.assertIn("nbgateway_upstream_h2_connections 1.0", text)
        self.assertIn('nbgateway_upstream_h2_dials_total{result="ok"} 1.0', text)
        self.assertIn('nbgateway_upstream_h2_dials_total{result="failed"} 0.0', text)
        self.assertIn("nbgateway_upstream_h2_streams 0.0", text)
        self.assertIn("nbgateway_upstream_h2_waiting 0.0", text)

    @defer.inlineCallbacks
    def test_large_client_stream_upload(self):
        call = method(self.channel, "Upload", "stream_unary")
        chunk = b"y" * (256 * 1024)

        def run() -> Any:
            return call(iter([chunk] * 12), timeout=20)

        reply = yield self.in_thread(run)
        self.assertEqual(reply, str(12 * len(chunk)).encode())

    @defer.inlineCallbacks
    def test_calls_share_one_upstream_connection(self):
        call = method(self.channel, "Unary")

        def run() -> Any:
            return [call(b"n%d" % i, timeout=10) for i in range(5)]

        replies = yield self.in_thread(run)
        self.assertEqual(replies, [b"echo:n%d" % i for i in range(5)])
        self.assertEqual(self.h.proxy.h2.pools.dials, 1)

    @defer.inlineCallbacks
    def test_unreachable_upstream_is_unavailable(self):
        self.grpc.stop()
        exc = yield self.error_of("Unary")
        self.assertIsNotNone(exc)
        self.assertEqual(exc.code(), grpc.StatusCode.UNAVAILABLE)


class GatewayGrpcTLSUpstreamTests(GatewayGrpcTests):
    """The same calls with the upstream on TLS (ALPN h2, verified against the
    CA the client TLS policy trusts)."""

    upstream_tls = True


class GatewayH2CTests(unittest.TestCase):
    """gRPC over a plain listener: h2c with prior knowledge from the client
    (the connection opens with the HTTP/2 preface)."""

    def setUp(self) -> None:
        self.grpc = EchoGrpc()
        self.addCleanup(self.grpc.stop)
        self.h = ProxyHarness()
        self.addCleanup(self.h.close)
        self.addCleanup(lambda: self.h.proxy.h2 and self.h.proxy.h2.close())
        self.h.add("app.example", {"/": f"http://127.0.0.1:{self.grpc.port}/"}, opts=H2_DIRECT)
        self.port = self.h.listen()
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.port}", options=[("grpc.default_authority", "app.example")])
        self.addCleanup(self.channel.close)

    @defer.inlineCallbacks
    def test_unary_and_stream_over_h2c(self):
        self.grpc.release.set()

        def run() -> Any:
            reply, info = method(self.channel, "Unary").with_call(
                b"plain", metadata=(("x-req", "c1"),), timeout=10)
            it = method(self.channel, "Stream", "unary_stream")(b"2", timeout=10)
            return reply, dict(info.trailing_metadata()), list(it), it.code()

        reply, trailing, streamed, code = yield threads.deferToThread(run)
        self.assertEqual(reply, b"echo:plain")
        self.assertEqual(trailing["x-trailing"], "bye")
        self.assertEqual(streamed, [b"msg0", b"msg1"])
        self.assertEqual(code, grpc.StatusCode.OK)
        self.assertEqual(self.grpc.metadata[0]["x-req"], "c1")
        self.assertEqual(self.grpc.metadata[0]["x-forwarded-proto"], "http")
        self.assertEqual(self.h.requests[-1].clientproto, b"HTTP/2")

    @defer.inlineCallbacks
    def test_http11_still_served_on_the_same_listener(self):
        from ._harness import curl

        # an HTTP/1.1 client on the plain listener: not mistaken for h2c; the
        # h2 upstream answers over HTTP/2 and the client gets HTTP/1.1
        status, head, _body = yield curl(
            "--http1.1", "-X", "POST", "-H", "content-type: application/grpc",
            "--data-binary", "@/dev/null", "-H", "Host: app.example",
            f"http://127.0.0.1:{self.port}/nbgw.test.Echo/Unary")
        self.assertEqual(status, 200)
        self.assertTrue(head.startswith("HTTP/1.1 200"), head)
        self.assertIn("grpc-status", head.lower())


class GatewayGrpcBalancedTests(unittest.TestCase):
    """A gRPC path with two targets, one down: the failed call counts against
    its target (passive ejection), later calls go to the live one."""

    def setUp(self) -> None:
        from google.protobuf import duration_pb2
        from twisted.internet import task

        from nbgateway._proto import proxy_service_pb2 as pb
        from nbgateway.routes.service import entry_from_mapping

        self.grpc = EchoGrpc()
        self.addCleanup(self.grpc.stop)
        self.grpc.release.set()
        from twisted.internet.protocol import Factory

        dead = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.dead_port = dead.getHost().port
        dead.stopListening()  # nothing listens there any more: refused
        self.clock = task.Clock()
        self.h = ProxyHarness(clock=self.clock)
        self.addCleanup(self.h.close)
        self.addCleanup(lambda: self.h.proxy.h2 and self.h.proxy.h2.close())
        m = pb.ProxyMapping(id="svc1", account_id="acc1", domain="app.example")
        for port in (self.dead_port, self.grpc.port):
            pm = m.path.add(path="/", target=f"http://127.0.0.1:{port}/")
            pm.options.nbgw_upstream_protocol = "h2"
            pm.options.nbgw_balancing.CopyFrom(pb.NbgwBalancing(
                max_failures=1, backoff=duration_pb2.Duration(seconds=60)))
        self.h.services["app.example"] = entry_from_mapping(m).service
        self.port = self.h.listen()
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{self.port}", options=[("grpc.default_authority", "app.example")])
        self.addCleanup(self.channel.close)

    @defer.inlineCallbacks
    def test_dead_target_ejected_after_a_failed_call(self):
        call = method(self.channel, "Unary")

        def run() -> Any:
            out = []
            for i in range(6):
                try:
                    out.append(call(b"n%d" % i, timeout=10))
                except grpc.RpcError as exc:
                    out.append(exc.code())
            return out

        out = yield threads.deferToThread(run)
        self.assertEqual(out[0], grpc.StatusCode.UNAVAILABLE)  # round robin: dead first
        self.assertEqual(out[1:], [b"echo:n%d" % i for i in range(1, 6)])
        self.assertEqual(len(self.grpc.metadata), 5)
