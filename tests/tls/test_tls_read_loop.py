"""The record path's read loop (nbgateway.tls.dispatch.DeadlineTLSProtocol
with nbgateway.tls.records): a read that holds whole records ends after the
last ``SSL_read`` that returned plaintext when no ciphertext is left in the
read BIO (no ``SSL_read`` that could only want more), and the send BIO is
read only when OpenSSL queued something.  What is delivered, in what order
and with what endings stays as before for any cut of the ciphertext into
reads; every test also runs on Twisted's path (``factory.records`` off) as
the reference."""

from __future__ import annotations

import contextlib
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi, lib
from twisted.trial import unittest

from nbgateway.tls import dispatch, records
from tests.tls._certs import self_signed_options
from tests.tls.test_tls_records import Harness


def _records_of(h: Harness, *parts: bytes) -> bytes:
    """The client's ciphertext for ``parts``, one TLS record each."""
    out = b""
    for part in parts:
        h.client.send(part)
        out += h.client.bio_read(1 << 16)
    return out


class _Counting:
    """Counts the calls into OpenSSL of the record path, wherever they are
    made (records' functions or dispatch's inlined common read and write):
    ``reads`` the ``SSL_read`` results (the plaintext, or the failing
    return value), ``empty_drains`` the ``BIO_read`` calls on an empty
    send BIO, ``asked`` the ``BIO_get_mem_data`` calls (the read and send BIOs
    asked how much they hold), ``drains`` the calls of ``records.drain``."""

    def __init__(self, test: unittest.TestCase) -> None:
        self.reads: list[Any] = []
        self.empty_drains = 0
        self.asked = 0
        self.drains = 0
        ssl_read, bio_read = records._ssl_read, records._bio_read
        pending, drain = records._mem_pending, records.drain

        def counted_read(ssl: Any, buf: Any, size: int) -> int:
            n = ssl_read(ssl, buf, size)
            self.reads.append(ffi.unpack(buf, n) if n > 0 else n)
            return n

        def counted_bio_read(bio: Any, buf: Any, size: int) -> int:
            n = bio_read(bio, buf, size)
            self.empty_drains += n <= 0
            return n

        def counted_pending(bio: Any, out: Any) -> int:
            self.asked += 1
            return pending(bio, out)

        def counted_drain(conn: Any) -> bytes:
            self.drains += 1
            return drain(conn)

        for module in (records, dispatch):
            test.patch(module, "_ssl_read", counted_read)
            test.patch(module, "_bio_read", counted_bio_read)
        test.patch(records, "_mem_pending", counted_pending)
        test.patch(records, "drain", counted_drain)


class ReadLoopTests(unittest.SynchronousTestCase):
    def test_one_record_one_ssl_read_and_no_empty_drain(self):
        h = Harness(self, True)
        self.assertEqual(h.exchange(b"ping"), b"4:ping")  # the held tickets go out
        calls = _Counting(self)
        for i in range(3):
            h.sniffer.dataReceived(_records_of(h, b"req%d" % i))
            self.assertEqual(h.received(), b"4:req%d" % i)
        # before: a second SSL_read per read (WANT_READ) and a BIO_read of nothing
        self.assertEqual(calls.reads, [b"req0", b"req1", b"req2"])
        self.assertEqual((calls.drains, calls.empty_drains), (0, 0))
        # one whole record per read on a record boundary: neither BIO asked
        # how much it holds (_RecordPath.clean)
        self.assertEqual(calls.asked, 0)
        # records in one read: each read, then the loop ends with the BIO empty
        h.sniffer.dataReceived(_records_of(h, b"a", b"bb", b"ccc"))
        self.assertEqual(h.received(), b"1:a2:bb3:ccc")
        self.assertEqual(calls.reads[3:], [b"a", b"bb", b"ccc"])
        self.assertEqual(calls.empty_drains, 0)

    def test_unread_and_unsent_count_the_bios(self):
        h = Harness(self, True)
        self.assertEqual(h.exchange(b"ping"), b"4:ping")
        conn = h.server._tlsConnection
        self.assertEqual((records.unread(conn), records.unsent(conn)), (0, 0))
        two = _records_of(h, b"one", b"two")
        self.assertEqual(records.feed(conn, two), len(two))
        self.assertEqual(records.unread(conn), len(two))
        self.assertEqual(records.read_plaintext(conn), b"one")
        self.assertEqual(records.unread(conn), len(two) // 2)  # the second record, whole
        self.assertEqual(records.read_plaintext(conn), b"two")
        self.assertEqual(records.unread(conn), 0)
        self.assertEqual(records.read_plaintext(conn), b"")  # wants more
        took, _result, _out = records.seal_drain(conn, b"x")
        self.assertEqual((took, records.unsent(conn)), (1, 0))
        records.seal(conn, b"queued")
        queued = records.unsent(conn)
        self.assertGreater(queued, len(b"queued"))
        self.assertEqual(len(records.drain(conn)), queued)
        self.assertEqual(records.unsent(conn), 0)

    def test_every_cut_of_three_records_delivers_all_in_order(self):
        """The ciphertext of three records cut at every offset into two
        reads (inside a header, inside a body, at a boundary): everything
        arrives, in order, by the end of the second read (a loop that
        stopped with ciphertext left would hold a record back)."""
        for records_on in (True, False):
            h = Harness(self, records_on)
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            probe = _records_of(h, b"a", b"bb", b"ccc")
            h.sniffer.dataReceived(probe)
            self.assertEqual(h.received(), b"1:a2:bb3:ccc")
            for cut in range(1, len(probe)):
                seen = len(h.app.got)
                data = _records_of(h, b"a", b"bb", b"ccc")
                h.sniffer.dataReceived(data[:cut])
                h.sniffer.dataReceived(data[cut:])
                self.assertEqual(b"".join(h.app.got[seen:]), b"abbccc", (records_on, cut))
                self.assertEqual(h.received(), b"".join(b"%d:" % len(g) + g
                                                    for g in h.app.got[seen:]))

    def test_close_notify_behind_data_in_one_read_ends_the_connection(self):
        for records_on in (True, False):
            h = Harness(self, records_on)
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            h.client.send(b"last")
            h.client.shutdown()
            h.sniffer.dataReceived(h.client.bio_read(1 << 16))  # data + close_notify
            self.assertEqual(h.app.got[-1], b"last")
            h.pump()
            self.assertTrue(h.wire.disconnecting)  # close_notify answered, then the FIN
            self.assertEqual(h.read(), b"4:last")
            self.assertEqual(h.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN,
                             SSL.RECEIVED_SHUTDOWN)


def _handshake(suite: bytes | None) -> SSL.Connection:
    """A server ``Connection`` after a TLS 1.3 handshake in memory, on
    ``suite`` (both ends offer only it) or the defaults."""
    server_ctx = self_signed_options().getContext()
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if suite is not None:
        for ctx in (server_ctx, client_ctx):
            assert lib.SSL_CTX_set_ciphersuites(ctx._context, suite) == 1
    server, client = SSL.Connection(server_ctx, None), SSL.Connection(client_ctx, None)
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(10):
        for one, other in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                one.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                other.bio_write(one.bio_read(1 << 16))
    assert server.get_protocol_version_name() == "TLSv1.3"
    assert suite is None or server.get_cipher_name() == suite.decode()
    return server


class OneRecordReadTests(unittest.SynchronousTestCase):
    """The common read (``_RecordPath.clean``): exactly one unpadded
    application record on a record boundary, one ``SSL_read`` and neither
    BIO asked; anything else goes through the loop."""

    def test_record_overhead_of_the_suites(self):
        for suite in (None, b"TLS_AES_128_GCM_SHA256", b"TLS_CHACHA20_POLY1305_SHA256",
                      b"TLS_AES_128_CCM_SHA256"):
            self.assertEqual(records.record_overhead(_handshake(suite)), 22, suite)
        # a suite not known to have a 16-byte tag (TLS_AES_128_CCM_8_SHA256,
        # which this OpenSSL does not offer by default, the integrity-only
        # ones): never taken as exact, every read through the loop
        self.patch(records, "TAG16_SUITES", frozenset({b"TLS_AES_128_CCM_SHA256"}))
        self.assertEqual(records.record_overhead(_handshake(b"TLS_AES_256_GCM_SHA384")), 0)
        # no handshake yet: no suite
        fresh = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None)
        self.assertEqual(records.record_overhead(fresh), 0)

    def test_the_bios_are_empty_after_the_common_read(self):
        h = Harness(self, True)
        self.assertEqual(h.exchange(b"ping"), b"4:ping")
        path = h.server._path
        self.assertTrue(path.clean)  # the loop ended on a whole record
        calls = _Counting(self)
        for size in (1, 100, 5000, 16384):
            body = b"x" * size
            data = _records_of(h, body)
            self.assertEqual(len(data), size + path.overhead)
            h.sniffer.dataReceived(data)
            self.assertEqual(h.app.got[-1], body)
            self.assertEqual(calls.asked, 0)
            self.assertEqual((records.unread(path), records.unsent(path)), (0, 0))
            calls.asked = 0
            self.assertEqual(h.received(), b"%d:" % size + body)
        self.assertEqual(calls.reads, [b"x" * n for n in (1, 100, 5000, 16384)])

    def test_a_read_after_part_of_a_record_goes_through_the_loop(self):
        """After a read that ended inside a record (OpenSSL holds part of
        it), a read that happens to be as long as one record of the
        plaintext it yields is not taken as one whole record."""
        h = Harness(self, True)
        self.assertEqual(h.exchange(b"ping"), b"4:ping")
        path = h.server._path
        calls = _Counting(self)
        one, two = _records_of(h, b"a" * 40), _records_of(h, b"b" * 40)
        h.sniffer.dataReceived(one[:10])
        self.assertFalse(path.clean)
        # the rest of the first record and the first 10 bytes of the second:
        # as long as one record of 40 bytes, but two records' pieces
        h.sniffer.dataReceived(one[10:] + two[:10])
        self.assertEqual(len(one[10:] + two[:10]), 40 + path.overhead)
        self.assertFalse(path.clean)
        h.sniffer.dataReceived(two[10:])
        self.assertTrue(path.clean)
        self.assertEqual(h.app.got[-2:], [b"a" * 40, b"b" * 40])
        self.assertEqual(h.received(), b"40:" + b"a" * 40 + b"40:" + b"b" * 40)
        self.assertGreater(calls.asked, 0)

    def test_a_suite_without_a_known_overhead_reads_through_the_loop(self):
        h = Harness(self, True)
        self.assertEqual(h.exchange(b"ping"), b"4:ping")
        path = h.server._path
        path.overhead = path.exact = 0  # as for TLS_AES_128_CCM_8_SHA256
        calls = _Counting(self)
        for i in range(3):
            h.sniffer.dataReceived(_records_of(h, b"req%d" % i))
            self.assertEqual(h.received(), b"4:req%d" % i)
        self.assertEqual(calls.reads, [b"req0", b"req1", b"req2"])
        self.assertEqual(calls.asked, 6)  # read BIO after each read, send BIO after the loop

    def test_close_notify_alone_after_the_common_read(self):
        h = Harness(self, True)
        self.assertEqual(h.exchange(b"ping"), b"4:ping")
        self.assertTrue(h.server._path.clean)
        h.client.shutdown()
        h.pump()
        self.assertTrue(h.wire.disconnecting)  # answered with close_notify, then the FIN
        self.assertEqual(h.read(), b"")
        self.assertEqual(h.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN,
                         SSL.RECEIVED_SHUTDOWN)
