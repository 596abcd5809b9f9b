"""The record path's read loop (nbgateway.tls.dispatch.DeadlineTLSProtocol
with nbgateway.tls.records): a read that holds whole records ends after the
last ``SSL_read`` that returned plaintext when no ciphertext is left in the
read BIO (no ``SSL_read`` that could only want more), and the send BIO is
read only when OpenSSL queued something.  What is delivered, in what order
and with what endings stays as before for any cut of the ciphertext into
reads; every test also runs on Twisted's path (``factory.records`` off) as
the reference."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.trial import unittest

from nbgateway.tls import records
from tests.tls.test_tls_records import Harness


def _records_of(h: Harness, *parts: bytes) -> bytes:
    """The client's ciphertext for ``parts``, one TLS record each."""
    out = b""
    for part in parts:
        h.client.send(part)
        out += h.client.bio_read(1 << 16)
    return out


class _Counting:
    def __init__(self, test: unittest.TestCase) -> None:
        self.reads: list[Any] = []
        self.drains = 0
        read, drain = records.read_plaintext, records.drain

        def read_plaintext(conn: Any) -> Any:
            got = read(conn)
            self.reads.append(got)
            return got

        def counted_drain(conn: Any) -> bytes:
            self.drains += 1
            return drain(conn)

        test.patch(records, "read_plaintext", read_plaintext)
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
        self.assertEqual(calls.drains, 0)
        # records in one read: each read, then the loop ends with the BIO empty
        h.sniffer.dataReceived(_records_of(h, b"a", b"bb", b"ccc"))
        self.assertEqual(h.received(), b"1:a2:bb3:ccc")
        self.assertEqual(calls.reads[3:], [b"a", b"bb", b"ccc"])

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
