"""The listeners' TLS protocol (nbgateway.tls.dispatch.DeadlineTLSProtocol)
stays under 30 attributes of its own after a handshake and keep-alive HTTPS
requests (through the gateway's fast channel and twisted.web's, on the
record path and Twisted's): CPython 3.11 gives up an instance's shared-keys
dict past that and every attribute read on it gets slower (~60 %
measured on the HTTP channel, tests/proxy/test_own_state.py).  Closing after requests
drops later writes as Twisted does.  In memory: a pyOpenSSL client on
memory BIOs, the server's transport a StringTransport, task.Clock."""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet import task
from twisted.internet.error import ConnectionAborted
from twisted.python.failure import Failure
from twisted.trial import unittest

from nbgateway.proxy.streaming import ProxySite
from nbgateway.tls.dispatch import DeadlineTLSProtocol, TLSOrPlainFactory
from tests.proxy.test_lean_path import Path
from tests.tls._certs import self_signed_options
from tests.tls.test_handshake_deadline import Hello
from tests.tls.test_tls_records import ADDR
from tests.tls.test_tls_records import Wire as _Wire

OPTIONS = self_signed_options(enableSessionTickets=True)


class Wire(_Wire):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class HTTPS:
    """One TLS connection to a ProxySite: the gateway's (fast channel, private
    gate, lean upstream) or twisted.web's."""

    def __init__(self, records_on: bool, max_version: int | None = None, *,
                 gateway: bool = True) -> None:
        if gateway:  # the gateway's site: fast channel, private gate, lean upstream
            self.path: Path | None = Path()
            clock, site = self.path.clock, self.path.channel.factory
        else:  # twisted.web's channel
            self.path = None
            clock = task.Clock()
            site = ProxySite(Hello(), reactor=clock)
        factory = TLSOrPlainFactory(OPTIONS, site, clock=clock)
        factory.tls_factory._clock = clock
        factory.tls_factory.records = records_on
        factory.tls_factory.coalesce_tickets = records_on
        self.clock, self.wire = clock, Wire()
        self.sniffer = factory.buildProtocol(ADDR)
        self.sniffer.makeConnection(self.wire)
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_alpn_protos([b"http/1.1"])
        if max_version is not None:
            ctx.set_max_proto_version(max_version)
        self.client = SSL.Connection(ctx, None)
        self.client.set_connect_state()
        for _ in range(10):
            try:
                self.client.do_handshake()
                break
            except SSL.WantReadError:
                self.pump()
        self.server: DeadlineTLSProtocol = self.sniffer.inner

    def pump(self) -> None:
        for _ in range(20):
            try:
                out = self.client.bio_read(1 << 20)
            except SSL.WantReadError:
                out = b""
            if out:
                self.sniffer.dataReceived(out)
            self.clock.advance(0)
            back = self.wire.value()
            self.wire.clear()
            if back:
                self.client.bio_write(back)
            if not out and not back:
                return

    def get(self, path: bytes) -> bytes:
        self.client.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: app.example\r\n\r\n")
        self.pump()
        if self.path is not None:  # the upstream answers
            wire, proto = self.path.up.upstreams[-1]
            wire.clear()
            proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: \"%s\"\r\n\r\ntls"
                               % path)
            self.pump()
        got = b""
        while True:
            try:
                got += self.client.recv(1 << 20)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                return got


class InstanceSizeTests(unittest.SynchronousTestCase):
    def test_under_30_attributes_after_keep_alive_requests(self):
        for records_on, version, gateway in ((True, None, True), (False, None, True),
                                             (True, SSL.TLS1_2_VERSION, True),
                                             (True, None, False)):
            h = HTTPS(records_on, version, gateway=gateway)
            for i in range(4):
                got = h.get(b"/p%d?q=%d" % (i, i))
                self.assertTrue(got.startswith(b"HTTP/1.1 200 OK\r\n"), got)
                self.assertTrue(got.endswith(b"\r\n\r\ntls"), got)
            self.assertEqual(h.server._records, records_on)  # TLS 1.2 too
            self.assertFalse(h.server._handshake_pending)
            self.assertLess(len(vars(h.server)), 30, sorted(vars(h.server)))
            if gateway:
                self.assertEqual(h.sniffer.inner.wrappedProtocol.fast_requests, 4)

    def test_writes_after_closing_are_dropped(self):
        """After keep-alive requests, loseConnection (then the channel's
        unregisterProducer) and abortConnection (then the loss) drop later
        writes as Twisted does, on both paths."""
        for records_on in (True, False):
            h = HTTPS(records_on)
            self.assertTrue(h.get(b"/a").endswith(b"tls"))
            h.server.loseConnection()
            self.assertTrue(h.server.disconnecting)
            before = h.wire.writes
            h.server.unregisterProducer()  # the channel's: TLS shuts down now
            self.assertEqual(h.wire.writes, before + 1)  # the close_notify
            h.server.write(b"late")
            self.assertEqual(h.wire.writes, before + 1)
            h.client.bio_write(h.wire.value())
            self.assertRaises(SSL.ZeroReturnError, h.client.recv, 1024)
            h = HTTPS(records_on)
            self.assertTrue(h.get(b"/b").endswith(b"tls"))
            h.server.abortConnection()
            self.assertTrue(h.server._aborted)
            h.sniffer.connectionLost(Failure(ConnectionAborted()))  # as the transport reports
            self.assertTrue(h.server._lostTLSConnection)
            before = h.wire.writes
            h.server.write(b"late")
            h.server.abortConnection()  # idempotent
            self.assertEqual(h.wire.writes, before)
