"""Twisted transport over a netstack TCP connection.

:class:`TunnelTCPTransport` adapts a sans-IO
:class:`~nbgateway.netstack.tcp_conn.Connection` to Twisted: it implements
``ITCPTransport`` (write, writeSequence, loseConnection, loseWriteConnection,
abortConnection, getPeer/getHost with the tunnel addresses, TCP_NODELAY and
keepalive switches), ``IPushProducer`` (pauseProducing stops delivery; the
received data queues inside the connection and the advertised receive window
closes as it does, so memory stays bounded by the window; resumeProducing
delivers the queue and reopens the window) and ``IConsumer`` (a registered
streaming producer is paused while more than ``SEND_HIGH_WATER`` bytes are
unacknowledged/unsent and resumed when that drops to ``SEND_LOW_WATER``; a
pull producer is asked for more at the same point).

Close semantics (mirroring ``twisted.internet.tcp``):

* ``loseConnection`` sends FIN after the buffered data (if a registered
  streaming producer is paused, after it was resumed once the buffer drained
  and wrote what it had, as Twisted does); ``connectionLost``
  (``ConnectionDone``) follows once the FIN is acknowledged.  Data the peer
  sends after that point is answered with RST, as a closed socket would.
* peer FIN: an ``IHalfCloseableProtocol`` gets ``readConnectionLost`` and
  may keep writing; any other protocol gets ``connectionLost(ConnectionDone)``
  while the connection flushes its buffer and closes underneath.
* ``loseWriteConnection`` sends FIN but keeps reading; ``writeConnectionLost``
  follows its acknowledgment (half-closeable protocols only).
* ``abortConnection`` sends RST and reports ``ConnectionAborted``.

``getTcpNoDelay()`` is True by default (Nagle off, as in Go); writes are
segmented and sent at once, so a protocol that writes many tiny pieces should
use ``writeSequence`` or set ``setTcpNoDelay(False)``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import address, error, interfaces
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nbgateway.netstack.checksum import IPAddress
from nbgateway.netstack.tcp_conn import Connection
from nbgateway.netstack.tcp_const import CLOSED

SEND_HIGH_WATER = 256 * 1024
SEND_LOW_WATER = 64 * 1024

log = Logger()


def tunnel_address(ip: IPAddress, port: int) -> address.IPv4Address | address.IPv6Address:
    if ip.version == 4:
        return address.IPv4Address("TCP", str(ip), port)
    return address.IPv6Address("TCP", str(ip), port)


@implementer(interfaces.ITCPTransport, interfaces.IPushProducer, interfaces.IConsumer,
             interfaces.ISystemHandle)
class TunnelTCPTransport:
    """A connected netstack TCP socket as seen by a Twisted protocol."""

    def __init__(self, conn: Connection, protocol: Any = None) -> None:
        self.conn = conn
        self.clock = conn.layer.clock
        self.protocol = protocol
        self.connected = True
        self.disconnecting = False
        self.disconnected = False
        self.producer: Any = None
        self.streamingProducer = False
        self._producer_paused = False
        self._close_pending = False
        self._write_closed = False
        self._write_done = False
        self._read_closed = False
        self._reading = True
        self._lost = False
        conn.user = self
        conn.writable_low = SEND_LOW_WATER

    def __repr__(self) -> str:
        return f"<TunnelTCPTransport {self.conn!r}>"

    def makeConnection(self, protocol: Any) -> None:
        """Attach ``protocol`` and call its ``makeConnection``."""
        self.protocol = protocol
        protocol.makeConnection(self)

    def _now(self) -> float:
        return self.clock.seconds()

    # ------------------------------------------------------------ ITransport

    def write(self, data: bytes) -> None:
        if data.__class__ is not bytes and not isinstance(data, bytes):
            raise TypeError(f"Data must be bytes, not {type(data).__name__}")
        if self._lost or self._write_closed or self.conn.fin_queued or not data:
            return
        conn = self.conn
        conn.send(data, self.clock.seconds())
        buf = conn.sndbuf
        if buf.end - buf.start > SEND_HIGH_WATER:  # conn.send_queued
            conn.want_writable = True
            if self.producer is not None and self.streamingProducer \
                    and not self._producer_paused:
                self._producer_paused = True
                self.producer.pauseProducing()
        elif self.producer is not None and not self.streamingProducer:
            conn.want_writable = True

    def writeSequence(self, iovec: Any) -> None:
        for chunk in iovec:
            if not isinstance(chunk, bytes):
                raise TypeError(f"Data must be bytes, not {type(chunk).__name__}")
        self.write(b"".join(iovec))

    def loseConnection(self) -> None:
        if self._lost or self.disconnecting:
            return
        self.disconnecting = True
        self._reading = False
        if self.producer is not None and self.streamingProducer and self._producer_paused:
            # like Twisted: a paused producer is resumed once the buffer drains
            # and may write more; the FIN follows what it writes then.
            self._close_pending = True
            return
        self._shutdown_write()

    def loseWriteConnection(self) -> None:
        if self._lost or self._write_closed:
            return
        self._write_closed = True
        self._shutdown_write()

    def _shutdown_write(self) -> None:
        conn = self.conn
        conn.close(self._now())
        if conn.state == CLOSED and not self._lost:
            self._connection_lost(error.ConnectionDone())

    def abortConnection(self) -> None:
        if self._lost:
            return
        self.conn.abort(self._now())
        self._connection_lost(error.ConnectionAborted())

    def getPeer(self) -> address.IPv4Address | address.IPv6Address:
        return tunnel_address(self.conn.remote, self.conn.rport)

    def getHost(self) -> address.IPv4Address | address.IPv6Address:
        return tunnel_address(self.conn.local, self.conn.lport)

    def getHandle(self) -> Connection:
        return self.conn

    def getTcpNoDelay(self) -> bool:
        return self.conn.nodelay

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.conn.nodelay = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self.conn.keepalive

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.conn.set_keepalive(bool(enabled), self._now())

    # ------------------------------------------------------------ IPushProducer

    def pauseProducing(self) -> None:
        if not self._lost:
            self.conn.pause_reading()

    def resumeProducing(self) -> None:
        if not self._lost:
            self.conn.resume_reading(self._now())

    def stopProducing(self) -> None:
        self.loseConnection()

    # ------------------------------------------------------------ IConsumer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, because producer "
                f"{self.producer!r} was never unregistered.")
        if self._lost:
            producer.stopProducing()
            return
        self.producer = producer
        self.streamingProducer = bool(streaming)
        self._producer_paused = False
        if not streaming:
            self.conn.want_writable = True
            producer.resumeProducing()
        elif self.conn.send_queued > SEND_HIGH_WATER:
            self.conn.want_writable = True
            self._producer_paused = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._producer_paused = False
        if self._close_pending and not self._lost:
            self._close_pending = False
            self._shutdown_write()

    # ------------------------------------------------------------ TCPUser events

    def tcp_established(self) -> None:  # active opens are reported to the endpoint
        pass

    def tcp_data(self, data: bytes) -> None:
        if not self._reading or self._lost:
            return
        try:
            self.protocol.dataReceived(data)
        except Exception:
            f = Failure()
            log.failure("dataReceived raised; aborting {transport!r}", f, transport=self)
            if not self._lost:
                self.conn.abort(self._now())
                self._connection_lost(f)

    def tcp_eof(self) -> None:
        self._read_closed = True
        if self._lost:
            return
        half = interfaces.IHalfCloseableProtocol(self.protocol, None)
        if half is not None and not self.disconnecting:
            self._call(half.readConnectionLost)
            if self._write_done or (self._write_closed and self.conn.state == CLOSED):
                self._connection_lost(error.ConnectionDone())
            return
        # A plain protocol: the connection is over for it; flush and close under it.
        self.conn.close(self._now())
        self._connection_lost(error.ConnectionDone())

    def tcp_fin_acked(self) -> None:
        self._write_done = True
        if self._lost:
            return
        if self.disconnecting and not self._close_pending:
            self._connection_lost(error.ConnectionDone())
            return
        half = interfaces.IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            self._call(half.writeConnectionLost)
        if self._read_closed and not self._lost:
            self._connection_lost(error.ConnectionDone())

    def tcp_writable(self) -> None:
        producer = self.producer
        if producer is None or self._lost:
            return
        if self.streamingProducer:
            if self._producer_paused:
                self._producer_paused = False
                producer.resumeProducing()
            if self._close_pending and not self._lost and not self._producer_paused:
                self._close_pending = False
                self._shutdown_write()
        else:
            self.conn.want_writable = True
            producer.resumeProducing()

    def tcp_closed(self, reason: Exception | None) -> None:
        self._connection_lost(reason if reason is not None else error.ConnectionDone())

    # ------------------------------------------------------------ teardown

    def _call(self, fn: Any) -> None:
        try:
            fn()
        except Exception:
            log.failure("protocol callback {fn!r} raised", fn=fn)

    def _connection_lost(self, reason: Exception | Failure) -> None:
        if self._lost:
            return
        self._lost = True
        self.connected = False
        self.disconnected = True
        self.disconnecting = True
        conn = self.conn
        if conn.user is self:
            conn.detach(self._now())
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                log.failure("stopProducing raised")
        f = reason if isinstance(reason, Failure) else Failure(reason)
        protocol = self.protocol
        if protocol is not None:
            try:
                protocol.connectionLost(f)
            except Exception:
                log.failure("connectionLost raised for {transport!r}", transport=self)
