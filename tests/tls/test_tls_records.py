"""The listeners' TLS record path (nbgateway.tls.records, used by
nbgateway.tls.dispatch.DeadlineTLSProtocol after a TLS 1.3 handshake):
the same bytes, the same endings and the same interface declarations as
Twisted's TLSMemoryBIOProtocol path it replaces.  Every behaviour test runs
with the record path on and off (``factory.records``).  In memory: a
pyOpenSSL client on memory BIOs, the server's transport a StringTransport
that reports loss only when told (as a netstack connection after a FIN)."""

from __future__ import annotations

import contextlib

from OpenSSL import SSL
from twisted.internet import ssl, task
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.protocols.tls import TLSMemoryBIOProtocol as T
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import directlyProvides, providedBy

from nbgateway.tls import records
from nbgateway.tls.dispatch import DeadlineTLSProtocol, TLSOrPlainFactory, _provide_like
from tests.tls import _memory as memory
from tests.tls._certs import self_signed_options
from tests.tls._memory import ADDR, Wire

OPTIONS = self_signed_options()
#: stateless session tickets, as the listeners' contexts (nbgateway.tls.contexts)
TICKETS = self_signed_options(enableSessionTickets=True)


class Echo(Protocol):
    """Answers each read with ``<n>:`` and the bytes read; ``close`` in the
    data closes the connection after the answer; records what it saw."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.got.append(data)
        self.transport.write(b"%d:" % len(data) + data)
        if b"close" in data:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


class Harness:
    def __init__(self, test: unittest.TestCase, records_on: bool, *,
                 max_version: int | None = None, client: SSL.Connection | None = None,
                 options: ssl.CertificateOptions = OPTIONS) -> None:
        self.clock = task.Clock()
        self.app = Echo()
        factory = TLSOrPlainFactory(options, Factory.forProtocol(lambda: self.app),
                                    clock=self.clock)
        factory.tls_factory._clock = self.clock
        factory.tls_factory.records = records_on
        factory.tls_factory.coalesce_tickets = records_on
        self.wire = Wire()
        self.sniffer = factory.buildProtocol(ADDR)
        self.sniffer.makeConnection(self.wire)
        if client is None:
            self.client = memory.client(b"http/1.1", max_version)
        else:
            self.client = client
            self.client.set_connect_state()
        memory.handshake(self.client, self.pump)
        self.pump()
        self.clock.advance(0)
        self.pump()
        self.read()  # session tickets
        self.server: DeadlineTLSProtocol = self.sniffer.inner

    def pump(self, tamper: bool = False) -> None:
        memory.pump(self.client, self.sniffer, self.wire, tamper)

    def read(self) -> bytes:
        return memory.read(self.client, closed_ok=True)

    def received(self) -> bytes:
        self.pump()
        return self.read()

    def exchange(self, data: bytes) -> bytes:
        self.client.sendall(data)
        self.pump()
        return self.read()


class RecordPathTests(unittest.SynchronousTestCase):
    def both(self):
        return [Harness(self, True), Harness(self, False)]

    def test_taken_after_a_tls13_or_tls12_handshake_only_when_switched_on(self):
        on, off = self.both()
        self.assertTrue(on.server._records)
        self.assertFalse(off.server._records)
        for records_on in (True, False):
            tls12 = Harness(self, records_on, max_version=SSL.TLS1_2_VERSION)
            self.assertEqual(tls12.client.get_protocol_version_name(), "TLSv1.2")
            self.assertEqual(tls12.server._records, records_on)  # (tests/tls/test_tls12_records.py)
            self.assertEqual(tls12.exchange(b"ping"), b"4:ping")

    def test_same_bytes_both_ways_small_large_and_several_records_per_read(self):
        for h in self.both():
            self.assertEqual(h.exchange(b"GET / HTTP/1.1\r\n\r\n"), b"18:GET / HTTP/1.1\r\n\r\n")
            # three records reach the server in one dataReceived: three reads
            for part in (b"a", b"bb", b"ccc"):
                h.client.send(part)
            h.pump()
            self.assertEqual(h.read(), b"1:a2:bb3:ccc")
            # a 200 KB write: OpenSSL splits it into records, the server reads
            # them (at most READ_SIZE each) and answers each read
            big = bytes(range(256)) * 800
            h.client.sendall(big)
            h.pump()
            echoed = h.read()
            self.assertEqual(b"".join(h.app.got[4:]), big)
            self.assertTrue(all(len(g) <= records.READ_SIZE for g in h.app.got))
            self.assertEqual(len(echoed), len(big) + sum(len(b"%d:" % len(g))
                                                         for g in h.app.got[4:]))

    def test_one_transport_write_per_small_write_and_slices_for_a_large_one(self):
        for h in self.both():
            before = h.wire.writes
            h.server.write(b"x" * 500)
            self.assertEqual(h.wire.writes - before, 1)
            self.assertEqual(h.received(), b"x" * 500)
            payload = b"y" * (3 * records.SEAL_SLICE + 10)
            before = h.wire.writes
            h.server.write(payload)
            self.assertEqual(h.received(), payload)
            if h.server._records:  # one flush per SEAL_SLICE of plaintext
                self.assertEqual(h.wire.writes - before, 4)
            h.server.writeSequence([b"a", b"b", b"c"])
            self.assertEqual(h.received(), b"abc")
            self.assertEqual(self_delayed(h), [])

    def test_seal_drain_at_record_and_slice_boundaries(self):
        """seal_drain's ciphertext decrypts to the slice it consumed, for
        sizes around a record (16 KiB) and the slice (SEAL_SLICE), from
        offset 0 and from inside the data (the write path's next slice)."""
        h = Harness(self, True)
        self.assertEqual(h.exchange(b"ping"), b"4:ping")  # the held session tickets go out
        conn = h.server._tlsConnection
        rec = 1 << 14
        sizes = (0, 1, 500, rec - 1, rec, rec + 1, 3 * rec + 7,
                 records.SEAL_SLICE - 1, records.SEAL_SLICE, records.SEAL_SLICE + 1,
                 2 * records.SEAL_SLICE + 5)
        for size in sizes:
            data = bytes(i % 251 for i in range(size))
            for offset in sorted({0, min(size, 3), min(size, rec + 1)}):
                took, result, out = records.seal_drain(conn, data, offset)
                self.assertEqual(took, min(size - offset, records.SEAL_SLICE), (size, offset))
                self.assertGreater(result, 0)
                self.assertEqual(records.drain(conn), b"")  # nothing left behind
                if out:
                    h.client.bio_write(out)
                self.assertEqual(h.read(), data[offset:offset + took], (size, offset))
        # a memoryview is sealed as its bytes
        took, _result, out = records.seal_drain(conn, memoryview(b"view"))
        h.client.bio_write(out)
        self.assertEqual((took, h.read()), (4, b"view"))

    def test_sniffer_hands_tls_reads_straight_to_the_tls_protocol(self):
        """Straight to the TLS protocol, and on the record path straight to
        the path's read; back to the protocol when the path is left."""
        for records_on in (True, False):
            h = Harness(self, records_on)
            path = h.server._path
            self.assertEqual(path is not None, records_on)
            reader = path.read if records_on else h.server.dataReceived
            self.assertEqual(h.sniffer.dataReceived, reader)
            self.assertEqual(h.exchange(b"ping"), b"4:ping")
            h.sniffer.connectionLost(Failure(ConnectionDone()))
            self.assertIsNotNone(h.app.lost)
            self.assertEqual(h.sniffer.dataReceived, h.server.dataReceived)
            self.assertIsNone(h.server._sniffer)
            h.client.send(b"late")
            with contextlib.suppress(AttributeError):  # as Twisted's: released
                h.sniffer.dataReceived(h.client.bio_read(1 << 16))
            self.assertNotIn(b"late", h.app.got)

    def test_leaving_the_record_path_gives_the_reads_back_to_the_protocol(self):
        h = Harness(self, True)
        path = h.server._path
        self.assertEqual(h.sniffer.dataReceived, path.read)
        self.assertEqual(h.exchange(b"close"), b"5:close")  # the app closes
        self.assertIsNone(h.server._path)
        self.assertEqual(h.sniffer.dataReceived, h.server.dataReceived)
        self.assertIs(h.server._sniffer, h.sniffer)

    def test_client_close_notify_is_answered_and_the_transport_closed(self):
        for h in self.both():
            h.client.shutdown()
            h.pump()
            self.assertTrue(h.wire.disconnecting)  # close_notify both ways, then the FIN
            self.assertEqual(h.read(), b"")
            self.assertEqual(h.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN,
                             SSL.RECEIVED_SHUTDOWN)
            h.server.connectionLost(Failure(ConnectionDone()))
            self.assertIsNotNone(h.app.lost)

    def test_a_corrupted_record_ends_the_connection_with_the_ssl_error(self):
        for h in self.both():
            h.client.send(b"hello")
            h.pump(tamper=True)
            self.assertEqual(h.app.got, [])  # nothing delivered from a bad record
            self.assertTrue(h.wire.disconnecting)
            h.server.connectionLost(Failure(ConnectionDone()))
            self.assertIsNotNone(h.app.lost)
            self.assertTrue(h.app.lost.check(SSL.Error), h.app.lost)

    def test_server_close_then_writes_are_dropped(self):
        for h in self.both():
            self.assertEqual(h.exchange(b"close"), b"5:close")
            h.server.write(b"late")  # after loseConnection: dropped
            self.assertEqual(h.received(), b"")
            self.assertEqual(h.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN,
                             SSL.RECEIVED_SHUTDOWN)
            h.server.connectionLost(Failure(ConnectionDone()))
            h.server.write(b"later")  # after the loss: dropped, no error
            self.assertIsNotNone(h.app.lost)

    def test_data_after_the_loss_is_not_delivered(self):
        h = Harness(self, True)
        h.client.send(b"after")
        late = h.client.bio_read(1 << 16)
        h.server.connectionLost(Failure(ConnectionDone()))
        seen = list(h.app.got)
        with contextlib.suppress(AttributeError):  # as Twisted's: the connection is released
            h.sniffer.dataReceived(late)
        self.assertEqual(h.app.got, seen)


class DeclarationTests(unittest.SynchronousTestCase):
    def test_interfaces_as_twisteds_make_connection_leaves_them(self):
        """The cached declaration equals what TLSMemoryBIOProtocol's
        per-interface directlyProvides loop leaves (the transport's last
        interface), and adaptation to IPushProducer answers the same."""
        from nbgateway.netstack.transport import TunnelTCPTransport

        clock = task.Clock()
        for transport in (StringTransport(), _netstack_like(TunnelTCPTransport)):
            ours = TLSOrPlainFactory(OPTIONS, Factory.forProtocol(Protocol),
                                     clock=clock).tls_factory.buildProtocol(ADDR)
            theirs = TLSMemoryBIOFactory(OPTIONS, False, Factory.forProtocol(Protocol),
                                         clock).buildProtocol(ADDR)
            # only the declaration step of makeConnection is compared
            for interface in providedBy(transport):
                directlyProvides(theirs, interface)
            _provide_like(ours, transport)
            _provide_like(ours, transport)  # cached: the same again
            self.assertEqual(list(ours.__provides__), list(theirs.__provides__))
            self.assertEqual(set(providedBy(ours)) - set(providedBy(T.__new__(T))),
                             set(providedBy(theirs)) - set(providedBy(T.__new__(T))))
            self.assertEqual(IPushProducer(ours, None) is ours,
                             IPushProducer(theirs, None) is theirs)
            self.assertEqual(IPushProducer(ours, None) is None,
                             IPushProducer(theirs, None) is None)

    def test_real_make_connection_declares_like_twisted(self):
        clock = task.Clock()
        wire = Wire()
        ours = TLSOrPlainFactory(OPTIONS, Factory.forProtocol(Protocol),
                                 clock=clock).tls_factory.buildProtocol(ADDR)
        ours.makeConnection(wire)
        theirs = TLSMemoryBIOFactory(OPTIONS, False, Factory.forProtocol(Protocol),
                                     clock).buildProtocol(ADDR)
        theirs.makeConnection(Wire())
        self.assertEqual(list(ours.__provides__), list(theirs.__provides__))
        self.assertIsNotNone(ours.getHandle())
        self.assertEqual(wire.value(), b"")  # a server sends nothing before the ClientHello
        ours._cancel_deadline()


def _netstack_like(cls):
    return cls.__new__(cls)


def self_delayed(h: Harness) -> list:
    return h.clock.getDelayedCalls()


class TicketTests(unittest.SynchronousTestCase):
    """TLS 1.3 session tickets (written by OpenSSL when the client's
    Finished arrives) go out in front of the next write instead of in a
    transport write (a TCP segment) of their own."""

    def test_held_after_the_handshake_and_sent_with_the_first_write(self):
        on, off = Harness(self, True), Harness(self, False)
        self.assertTrue(on.server._held)  # nothing wrote since the Finished
        self.assertEqual(off.server._held, b"")
        sizes = {}
        for h in (on, off):
            before = h.wire.writes
            h.server.write(b"response")
            self.assertEqual(h.wire.writes - before, 1)
            sizes[h is on] = len(h.wire.value())
            self.assertEqual(h.received(), b"response")  # records in order: decrypts
        self.assertEqual(on.server._held, b"")
        self.assertGreater(sizes[True], sizes[False] + 100)  # the tickets rode along

    def test_the_held_tickets_resume_a_session(self):
        from OpenSSL._util import lib

        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_alpn_protos([b"http/1.1"])
        for records_on in (True, False):
            first = Harness(self, records_on, client=SSL.Connection(ctx, None),
                            options=TICKETS)
            self.assertEqual(first.exchange(b"x"), b"1:x")  # the tickets arrive with it
            again = SSL.Connection(ctx, None)
            again.set_session(first.client.get_session())
            second = Harness(self, records_on, client=again, options=TICKETS)
            self.assertEqual(lib.SSL_session_reused(second.client._ssl), 1)
            self.assertEqual(second.exchange(b"y"), b"1:y")

    def test_held_bytes_go_out_before_the_close_notify(self):
        h = Harness(self, True)
        self.assertTrue(h.server._held)
        h.server.loseConnection()
        h.pump()
        self.assertEqual(h.read(), b"")  # the close_notify decrypted behind the tickets
        self.assertEqual(h.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN, SSL.RECEIVED_SHUTDOWN)
        self.assertEqual(h.server._held, b"")

    def test_a_read_that_writes_nothing_keeps_them_held(self):
        h = Harness(self, True)
        h.app.dataReceived = h.app.got.append  # answers nothing
        h.client.send(b"quiet")
        before = h.wire.writes
        h.pump()
        self.assertEqual(h.wire.writes, before)
        self.assertTrue(h.server._held)

    def test_tls12_final_flight_is_never_held(self):
        h = Harness(self, True, max_version=SSL.TLS1_2_VERSION)
        self.assertEqual(h.server._held, b"")  # the client needs the server's Finished
        self.assertEqual(h.exchange(b"ping"), b"4:ping")

