"""TLS 1.2 connections on the record path (nbgateway.tls.records with
nbgateway.tls.dispatch._RecordPath): taken once the handshake is done, with
renegotiation refused from then on; the common read of exactly one record
knows the TLS 1.2 AEAD records' sizes (AES-GCM: 8-byte explicit nonce,
ChaCha20-Poly1305: none); suites with other record sizes (CBC) read through
the loop.  Every behaviour test runs with the record path on and off
(Twisted's path, the reference) and on AES-GCM, ChaCha20-Poly1305 and a CBC
suite."""

from __future__ import annotations

from OpenSSL import SSL
from OpenSSL._util import lib
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from nbgateway.tls import records
from tests.tls._certs import self_signed_options
from tests.tls.test_tls_read_loop import _Counting, _records_of
from tests.tls.test_tls_records import Harness

GCM = "ECDHE-ECDSA-AES256-GCM-SHA384"
CHACHA = "ECDHE-ECDSA-CHACHA20-POLY1305"
CBC = "ECDHE-ECDSA-AES128-SHA"
#: the record overhead the path must find for each suite (0: never exact)
OVERHEAD = {GCM: 29, CHACHA: 21, CBC: 0}


def tls12(test: unittest.TestCase, records_on: bool, cipher: str = GCM,
          options=None) -> Harness:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_alpn_protos([b"http/1.1"])
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(cipher.encode())
    kw = {} if options is None else {"options": options}
    h = Harness(test, records_on, client=SSL.Connection(ctx, None), **kw)
    assert h.client.get_protocol_version_name() == "TLSv1.2"
    assert h.client.get_cipher_name() == cipher, h.client.get_cipher_name()
    return h


def every(test: unittest.TestCase):
    for cipher in (GCM, CHACHA, CBC):
        for records_on in (True, False):
            yield cipher, records_on, tls12(test, records_on, cipher)


class TakenTests(unittest.SynchronousTestCase):
    def test_taken_with_the_suites_record_overhead_and_renegotiation_refused(self):
        for cipher, records_on, h in every(self):
            self.assertEqual(h.server._records, records_on)
            self.assertEqual(h.server._held, b"")  # TLS 1.2: nothing held
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            ssl = h.server._tlsConnection._ssl
            refused = bool(lib.SSL_get_options(ssl) & lib.SSL_OP_NO_RENEGOTIATION)
            self.assertEqual(refused, records_on)
            if records_on:
                path = h.server._path
                self.assertEqual(path.overhead, OVERHEAD[cipher], cipher)
                data = _records_of(h, b"x" * 100)
                self.assertEqual(len(data) - 100 == path.overhead, cipher != CBC, cipher)

    def test_record_overhead_is_0_when_compression_is_not_ruled_out(self):
        h = tls12(self, True)
        conn = h.server._tlsConnection
        self.assertEqual(records.record_overhead(conn), 29)

        class WithoutNoCompression:  # the bindings, as if the option were not set
            def __getattr__(self, name):
                return getattr(lib, name)

            def SSL_get_options(self, ssl):
                return lib.SSL_get_options(ssl) & ~lib.SSL_OP_NO_COMPRESSION

        self.patch(records, "_lib", WithoutNoCompression())
        self.assertEqual(records.record_overhead(conn), 0)
        tls13 = Harness(self, True)
        self.assertEqual(records.record_overhead(tls13.server._tlsConnection), 22)

    def test_bindings_without_the_options_keep_tls12_on_twisteds_path(self):
        self.patch(records, "TLS12_AVAILABLE", False)
        h = tls12(self, True)
        self.assertFalse(h.server._records)
        self.assertEqual(records.record_overhead(h.server._tlsConnection), 0)
        self.assertEqual(h.exchange(b"ping"), b"4:ping")
        self.assertTrue(Harness(self, True).server._records)  # TLS 1.3 still taken

    def test_a_renegotiating_client_gets_the_same_refusal_on_both_paths(self):
        for _cipher, _records_on, h in every(self):
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            self.assertTrue(h.client.renegotiate())
            with self.assertRaises(SSL.WantReadError):
                h.client.do_handshake()
            h.pump()  # the server answers with a no_renegotiation alert
            with self.assertRaisesRegex(SSL.Error, "no renegotiation"):
                h.client.do_handshake()
            self.assertEqual(lib.SSL_total_renegotiations(h.server._tlsConnection._ssl), 0)
            self.assertEqual(h.app.got, [b"ping"])
            self.assertFalse(h.wire.disconnecting)
            self.assertIsNone(h.app.lost)

    def test_a_context_that_allows_client_renegotiation_keeps_twisteds_path(self):
        options = self_signed_options()
        options.getContext().set_options(records.ALLOW_CLIENT_RENEGOTIATION)
        h = tls12(self, True, options=options)
        self.assertFalse(h.server._records)
        self.assertIsNone(h.server._path)
        self.assertEqual(h.exchange(b"ping"), b"4:ping")
        self.assertTrue(h.client.renegotiate())
        for _ in range(5):
            try:
                h.client.do_handshake()
                break
            except SSL.WantReadError:
                h.pump()
        self.assertEqual(lib.SSL_total_renegotiations(h.client._ssl), 1)
        self.assertEqual(h.exchange(b"after"), b"5:after")  # renegotiated, as before


class RecordTests(unittest.SynchronousTestCase):
    def test_same_bytes_small_several_records_per_read_and_large(self):
        big = bytes(range(256)) * 800
        for cipher, records_on, h in every(self):
            case = (cipher, records_on)
            self.assertEqual(h.exchange(b"GET / HTTP/1.1\r\n\r\n"), b"18:GET / HTTP/1.1\r\n\r\n")
            h.sniffer.dataReceived(_records_of(h, b"a", b"bb", b"ccc"))
            self.assertEqual(h.received(), b"1:a2:bb3:ccc", case)
            seen = len(h.app.got)
            h.client.sendall(big)
            h.pump()
            echoed = h.read()
            self.assertEqual(b"".join(h.app.got[seen:]), big, case)
            self.assertEqual(len(echoed), len(big) + sum(len(b"%d:" % len(g))
                                                         for g in h.app.got[seen:]))
            payload = b"y" * (2 * records.SEAL_SLICE + 10)
            h.server.write(payload)
            self.assertEqual(h.received(), payload, case)

    def test_one_record_per_read_one_ssl_read_and_neither_bio_asked(self):
        for cipher in (GCM, CHACHA):
            h = tls12(self, True, cipher)
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            path = h.server._path
            self.assertTrue(path.clean, cipher)
            calls = _Counting(self)
            for size in (1, 100, 5000, 16384):
                body = b"x" * size
                h.sniffer.dataReceived(_records_of(h, body))
                self.assertEqual(h.app.got[-1], body)
                self.assertEqual(calls.asked, 0, (cipher, size))
                self.assertEqual((records.unread(path), records.unsent(path)), (0, 0))
                calls.asked = 0
                self.assertEqual(h.received(), b"%d:" % size + body)
            self.assertEqual(calls.reads, [b"x" * n for n in (1, 100, 5000, 16384)])
            self.assertEqual((calls.drains, calls.empty_drains), (0, 0))

    def test_a_cbc_suite_reads_through_the_loop(self):
        h = tls12(self, True, CBC)
        self.assertEqual(h.exchange(b"ping"), b"4:ping")
        calls = _Counting(self)
        for i in range(3):
            h.sniffer.dataReceived(_records_of(h, b"req%d" % i))
            self.assertEqual(h.received(), b"4:req%d" % i)
        self.assertEqual(calls.reads, [b"req0", b"req1", b"req2"])
        self.assertEqual(calls.asked, 3 * 2)  # read BIO after each read, send BIO after

    def test_every_cut_of_three_records_delivers_all_in_order(self):
        for cipher, records_on, h in every(self):
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            probe = _records_of(h, b"a", b"bb", b"ccc")
            h.sniffer.dataReceived(probe)
            self.assertEqual(h.received(), b"1:a2:bb3:ccc")
            for cut in range(1, len(probe)):
                seen = len(h.app.got)
                data = _records_of(h, b"a", b"bb", b"ccc")
                h.sniffer.dataReceived(data[:cut])
                h.sniffer.dataReceived(data[cut:])
                self.assertEqual(b"".join(h.app.got[seen:]), b"abbccc",
                                 (cipher, records_on, cut))
                self.assertEqual(h.received(), b"".join(b"%d:" % len(g) + g
                                                    for g in h.app.got[seen:]))

    def test_a_read_as_long_as_one_record_after_part_of_one(self):
        """A read of ``n + overhead`` bytes whose first SSL_read gives
        ``n`` is not one whole record when OpenSSL held part of one."""
        for cipher in (GCM, CHACHA):
            h = tls12(self, True, cipher)
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            path = h.server._path
            one, two = _records_of(h, b"a" * 40), _records_of(h, b"b" * 40)
            h.sniffer.dataReceived(one[:10])
            self.assertFalse(path.clean)
            h.sniffer.dataReceived(one[10:] + two[:10])
            self.assertEqual(len(one[10:] + two[:10]), 40 + path.overhead)
            self.assertFalse(path.clean)
            h.sniffer.dataReceived(two[10:])
            self.assertTrue(path.clean)
            self.assertEqual(h.app.got[-2:], [b"a" * 40, b"b" * 40])
            self.assertEqual(h.received(), b"40:" + b"a" * 40 + b"40:" + b"b" * 40)


class EndingTests(unittest.SynchronousTestCase):
    def test_client_close_notify_alone_and_behind_data(self):
        for behind in (False, True):
            for cipher, records_on, h in every(self):
                self.assertEqual(h.exchange(b"ping"), b"4:ping")
                if behind:
                    h.client.send(b"last")
                h.client.shutdown()
                h.pump()
                self.assertTrue(h.wire.disconnecting, (cipher, records_on))
                self.assertEqual(h.read(), b"4:last" if behind else b"")
                self.assertEqual(h.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN,
                                 SSL.RECEIVED_SHUTDOWN)
                h.server.connectionLost(Failure(ConnectionDone()))
                self.assertIsNotNone(h.app.lost)

    def test_a_corrupted_record_ends_the_connection_with_the_ssl_error(self):
        for cipher, records_on, h in every(self):
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            h.client.send(b"hello")
            h.pump(tamper=True)
            self.assertEqual(h.app.got, [b"ping"], (cipher, records_on))
            self.assertTrue(h.wire.disconnecting)
            h.server.connectionLost(Failure(ConnectionDone()))
            self.assertTrue(h.app.lost.check(SSL.Error), h.app.lost)

    def test_server_close_sends_close_notify_and_drops_later_writes(self):
        for _cipher, _records_on, h in every(self):
            self.assertEqual(h.exchange(b"close"), b"5:close")
            self.assertIsNone(h.server._path)
            h.server.write(b"late")
            self.assertEqual(h.received(), b"")
            self.assertEqual(h.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN,
                             SSL.RECEIVED_SHUTDOWN)


class ResumptionTests(unittest.SynchronousTestCase):
    """An abbreviated TLS 1.2 handshake (a resumed session): the client's
    Finished is its last flight and may share a read with its first
    request; the path starts after that read, the request answered once."""

    def test_resumed_session_with_the_request_behind_the_finished(self):
        from tests.tls.test_tls_records import TICKETS

        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_alpn_protos([b"http/1.1"])
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        for records_on in (True, False):
            first = Harness(self, records_on, client=SSL.Connection(ctx, None), options=TICKETS)
            self.assertEqual(first.exchange(b"x"), b"1:x")
            for together in (False, True):
                again = SSL.Connection(ctx, None)
                again.set_session(first.client.get_session())
                again.set_connect_state()
                h = _Bare(self, records_on, again)
                with self.assertRaises(SSL.WantReadError):
                    again.do_handshake()  # the ClientHello
                h.to_server()
                again.do_handshake()  # the server's flight: resumed, done here
                self.assertEqual(lib.SSL_session_reused(again._ssl), 1)
                if together:
                    again.send(b"first")  # rides in the read with the Finished
                h.to_server()
                if not together:
                    h.to_server(b"first")
                server = h.sniffer.inner
                self.assertEqual(server._records, records_on)
                self.assertEqual(h.app.got, [b"first"], (records_on, together))
                self.assertEqual(again.recv(1024), b"5:first")  # (to_server passed it on)
                h.to_server(b"second")
                self.assertEqual(again.recv(1024), b"6:second")


class _Bare:
    """A listener connection driven one client flight at a time."""

    def __init__(self, test: unittest.TestCase, records_on: bool, client: SSL.Connection) -> None:
        from twisted.internet import task
        from twisted.internet.protocol import Factory

        from nbgateway.tls.dispatch import TLSOrPlainFactory
        from tests.tls.test_tls_records import ADDR, TICKETS, Echo, Wire

        self.clock = task.Clock()
        self.app = Echo()
        factory = TLSOrPlainFactory(TICKETS, Factory.forProtocol(lambda: self.app),
                                    clock=self.clock)
        factory.tls_factory._clock = self.clock
        factory.tls_factory.records = records_on
        factory.tls_factory.coalesce_tickets = records_on
        self.wire = Wire()
        self.sniffer = factory.buildProtocol(ADDR)
        self.sniffer.makeConnection(self.wire)
        self.client = client

    def to_server(self, data: bytes | None = None) -> None:
        if data is not None:
            self.client.send(data)
        self.sniffer.dataReceived(self.client.bio_read(1 << 16))
        self.clock.advance(0)
        out = self.wire.value()
        if out:
            self.wire.clear()
            self.client.bio_write(out)
