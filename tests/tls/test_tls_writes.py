"""The TLS listener's write path (nbgateway.tls.dispatch.DeadlineTLSProtocol):
on an HTTP/1.1 (or no-ALPN) connection a write becomes TLS records at once,
with no flush timer; on HTTP/2 writes are still aggregated and flushed on the
next reactor turn (Twisted's BufferingTLSTransport).  In memory: pyOpenSSL
client on memory BIOs, the server's transport a StringTransport, task.Clock."""

from __future__ import annotations

import contextlib

from OpenSSL import SSL
from twisted.internet import task
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from nbgateway.tls.dispatch import TLSOrPlainFactory
from tests.tls import _memory as memory
from tests.tls._certs import self_signed_options
from tests.tls._memory import ADDR, Wire


class TwoWrites(Protocol):
    """Answers every read with two writes and a writeSequence."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"one:" + data)
        self.transport.write(b"|two")
        self.transport.writeSequence([b"|th", b"ree"])


class _Connected(unittest.SynchronousTestCase):
    """A TLS connection through the listener's factory, in memory."""

    def connect(self, alpn: bytes, early: bytes = b""):
        self.clock = task.Clock()
        factory = TLSOrPlainFactory(self_signed_options(), Factory.forProtocol(TwoWrites),
                                    clock=self.clock)
        factory.tls_factory._clock = self.clock  # Twisted's aggregator timer
        self.wire = Wire()
        self.server = factory.buildProtocol(ADDR)
        self.server.makeConnection(self.wire)
        self.client = memory.client(alpn)
        memory.handshake(self.client, self.pump)
        self.assertEqual(self.client.get_alpn_proto_negotiated(), alpn)
        if early:  # app data in the same flight as the client's Finished
            self.client.send(early)
        self.pump()

    def pump(self) -> None:
        memory.pump(self.client, self.server, self.wire)

    def read(self) -> bytes:
        return memory.read(self.client)



class TLSWriteTests(_Connected):
    def test_http11_writes_reach_the_transport_at_once_without_a_timer(self):
        self.connect(b"http/1.1")
        self.read()
        before = self.wire.writes
        self.client.send(b"req")
        self.pump()  # no clock.advance: nothing may wait for a reactor turn
        self.assertEqual(self.read(), b"one:req|two|three")
        self.assertEqual(self.wire.writes - before, 3)  # one TLS write per app write
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_h2_writes_are_still_aggregated_into_one_flush_next_turn(self):
        self.connect(b"h2")
        self.read()
        before = self.wire.writes
        self.client.send(b"req")
        self.pump()
        self.assertEqual(self.read(), b"")  # held by the aggregator
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.pump()
        self.assertEqual(self.read(), b"one:req|two|three")
        self.assertEqual(self.wire.writes - before, 1)

    def test_loss_then_writes_are_dropped(self):
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.connect(b"http/1.1")
        self.server.connectionLost(Failure(ConnectionDone()))
        self.server.inner.write(b"late")  # after loss: dropped, no error
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_writes_in_the_handshake_turn_are_aggregated_and_stay_in_order(self):
        """Data arriving with the client's Finished is answered before the
        write path knows the handshake is done: those writes go to the
        aggregator, and a write while it holds bytes goes behind them."""
        self.connect(b"http/1.1", early=b"first")
        self.assertEqual(self.read(), b"")  # held until the next turn
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.server.inner.write(b"|behind")  # bytes are buffered: goes behind them
        self.clock.advance(0)
        self.pump()
        self.assertEqual(self.read(), b"one:first|two|three|behind")
        self.client.send(b"next")  # now HTTP/1.1 writes go through at once
        self.pump()
        self.assertEqual(self.read(), b"one:next|two|three")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class H2RecordPathTests(_Connected):
    """On HTTP/2 the aggregator still joins a turn's writes; on the record
    path its flush seals them through nbgateway.tls.records (no pyOpenSSL
    ``send``), and leaving the path gives the flush back to Twisted."""

    def sends(self) -> list[int]:
        """Counts pyOpenSSL ``Connection.send`` calls on the server side."""
        calls: list[int] = []
        conn = self.server.inner._tlsConnection
        send = conn.send

        def counted(data: bytes, flags: int = 0) -> int:
            calls.append(len(data))
            return send(data, flags)

        self.patch(conn, "send", counted)
        return calls

    def test_the_flush_goes_through_the_record_path(self):
        self.connect(b"h2")
        tls = self.server.inner
        self.assertIsNotNone(tls._path)
        self.assertEqual(tls._aggregator._write, tls._path.seal_from)
        sends = self.sends()
        for i in range(3):
            before = self.wire.writes
            self.client.send(b"req%d" % i)
            self.pump()
            self.assertEqual(self.read(), b"")  # held by the aggregator
            self.clock.advance(0)
            self.pump()
            self.assertEqual(self.read(), b"one:req%d|two|three" % i)
            self.assertEqual(self.wire.writes - before, 1)
        self.assertEqual(sends, [])

    def test_a_large_turn_is_sealed_whole_and_in_order(self):
        self.connect(b"h2")
        self.read()
        big = bytes(range(256)) * 400  # 100 KiB: the aggregator flushes at 64 KB
        self.server.inner.write(big)
        self.server.inner.write(b"|tail")
        self.clock.advance(0)
        self.pump()
        self.assertEqual(self.read(), big + b"|tail")

    def test_closing_gives_the_flush_back_and_sends_the_buffered_frames_first(self):
        self.connect(b"h2")
        self.read()
        tls = self.server.inner
        twisted_flush = tls._path.twisted_flush
        tls.write(b"last frames")
        tls.loseConnection()
        self.assertIsNone(tls._path)
        self.assertEqual(tls._aggregator._write, twisted_flush)
        self.assertEqual(tls.write, tls._tls_write)
        self.pump()
        got = b""
        with contextlib.suppress(SSL.ZeroReturnError):
            while True:
                got += self.client.recv(1 << 16)
        self.assertEqual(got, b"last frames")  # before the close_notify
        self.client.shutdown()  # the answer: then the server closes the transport
        self.pump()
        self.assertTrue(self.wire.disconnecting)

    def test_the_held_tickets_go_in_front_of_the_first_flush(self):
        self.connect(b"h2")
        tls = self.server.inner
        self.assertTrue(tls._held)  # the session tickets, held since the handshake
        before = self.wire.writes
        self.client.send(b"req")
        self.pump()
        self.clock.advance(0)
        self.pump()
        self.assertEqual(self.wire.writes - before, 1)  # tickets and frames in one write
        self.assertEqual(tls._held, b"")
        self.assertEqual(self.read(), b"one:req|two|three")
