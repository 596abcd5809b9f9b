"""TLS-or-plain dispatch on one listening port (both inbound ports accept TLS
and plain HTTP).

:class:`TLSOrPlainFactory` wraps a plain (HTTP) server factory.  Each
connection waits for its first byte: ``0x16`` (a TLS handshake record) gets a
TLS-terminating protocol (``TLSMemoryBIOFactory`` with the given server
connection creator) around the plain protocol; anything else goes straight to
the plain protocol.  A client that sends nothing within ``peek_timeout``
seconds is disconnected (one deadline per connection, on the injected
clock).  Every connection is handled independently, so a silent client never
delays others (hardening over upstream's serial :80 feeder).

TLS connections then get a handshake deadline (``handshake_timeout``, 10 s
by default like the public read-header deadline, issue 11.5): a client that
has not completed its handshake by then is aborted.  Before, one byte of a
ClientHello held a connection until the HTTP idle timeout (120 s public,
90 s tunnel).  :class:`DeadlineTLSProtocol` also never raises when the
transport reports the loss of the connection synchronously from
``abortConnection`` (netstack connections do): Twisted's ``loseConnection``
mid-handshake aborts and then shuts TLS down on the already released
OpenSSL connection (``'NoneType' object has no attribute 'shutdown'``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import (
    BufferingTLSTransport,
    TLSMemoryBIOFactory,
    TLSMemoryBIOProtocol,
)

log = Logger()

TLS_HANDSHAKE = 0x16
DEFAULT_PEEK_TIMEOUT = 5.0
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


class DeadlineTLSProtocol(BufferingTLSTransport):
    """Twisted's TLS protocol with a handshake deadline and an idempotent,
    never-raising close (see the module docstring).

    It reads three attributes of Twisted's ``TLSMemoryBIOProtocol`` that
    have no public accessor (``_handshakeDone``, ``_appSendBuffer``,
    ``_aborted``); tests/tls/test_handshake_deadline.py pins the behaviour
    against the installed Twisted.  Its write path (HTTP/1.1 writes go to
    TLS at once, HTTP/2 keeps Twisted's aggregator) reads
    ``BufferingTLSTransport._aggregator`` and the aggregator's ``_buffer``;
    tests/tls/test_tls_writes.py pins that."""

    _handshake_call: Any = None
    #: HTTP/1.1 after the handshake: writes go to TLS at once (see :meth:`_tls_write`)
    _write_through = False
    _handshake_pending = True

    def __init__(self, factory: Any, wrappedProtocol: Any, _connectWrapped: bool = True) -> None:
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        # Twisted's BufferingTLSTransport puts every write in an aggregator
        # flushed by a callLater(0): a timer and a reactor turn of delay per
        # response.  The HTTP/1.1 fast path writes a small response in one
        # call already, so on such a connection a write becomes its TLS
        # record at once; HTTP/2 (many small frames) keeps the aggregator.
        self.write = self._tls_write  # type: ignore[method-assign]

    def _tls_write(self, data: bytes) -> None:
        aggregator = self._aggregator
        if self._write_through and not aggregator._buffer:
            TLSMemoryBIOProtocol.write(self, data)
        else:  # HTTP/2, before the handshake, or behind bytes already buffered
            aggregator.write(data)

    def writeSequence(self, sequence: Any) -> None:
        self.write(b"".join(sequence))

    def makeConnection(self, transport: Any) -> None:
        timeout = getattr(self.factory, "handshake_timeout", None)
        if timeout:
            self._handshake_call = self.factory.clock.callLater(timeout, self._handshake_expired)
        super().makeConnection(transport)
        self._handshake_progress()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self._handshake_progress()

    def _handshake_progress(self) -> None:
        if self._handshake_pending and self._handshakeDone:
            self._handshake_pending = False
            self._cancel_deadline()
            self._write_through = self.negotiatedProtocol != b"h2"

    def _cancel_deadline(self) -> None:
        call, self._handshake_call = self._handshake_call, None
        if call is not None and call.active():
            call.cancel()

    def _handshake_expired(self) -> None:
        self._handshake_call = None
        if self._handshakeDone:
            return
        self.factory.handshake_timeouts += 1
        peer = getattr(self.transport, "getPeer", lambda: None)()
        log.debug("TLS handshake not completed in {timeout}s; closing {peer}",
                  timeout=self.factory.handshake_timeout, peer=str(peer))
        self.abortConnection()

    def loseConnection(self) -> None:
        if self.getHandle() is None or self.disconnecting or not self.connected:
            return  # already lost or closing
        if not self._handshakeDone and not self._appSendBuffer:
            # Twisted aborts here too, but then goes on to shut TLS down on a
            # connection a synchronous transport has already released.
            self.abortConnection()
            return
        super().loseConnection()

    def abortConnection(self) -> None:
        if self.getHandle() is None or self._aborted:
            return  # already lost or aborted
        super().abortConnection()

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)


class DeadlineTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` building :class:`DeadlineTLSProtocol`."""

    protocol = DeadlineTLSProtocol

    def __init__(self, creator: Any, wrapped_factory: Any, *, clock: Any,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT) -> None:
        super().__init__(creator, False, wrapped_factory)
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.handshake_timeouts = 0


class _Sniffer(Protocol):
    def __init__(self, factory: TLSOrPlainFactory, addr: Any) -> None:
        self.factory = factory
        self.addr = addr
        self.inner: Any = None
        self._deadline: Any = None

    def connectionMade(self) -> None:
        self._deadline = self.factory.clock.callLater(self.factory.peek_timeout, self._timeout)

    def _timeout(self) -> None:
        self._deadline = None
        self.factory.peek_timeouts += 1
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if not data:
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        tls = data[0] == TLS_HANDSHAKE
        source = self.factory.tls_factory if tls else self.factory.plain_factory
        inner = source.buildProtocol(self.addr)
        if inner is None:
            self.transport.loseConnection()
            return
        if tls:
            self.factory.tls_connections += 1
        else:
            self.factory.plain_connections += 1
        self.inner = inner
        # The inner protocol owns the transport from now on (writes,
        # producers); this object only forwards what the transport delivers.
        inner.makeConnection(self.transport)
        inner.dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self.inner is not None:
            self.inner.connectionLost(reason)


class TLSOrPlainFactory(Factory):
    """Serves ``plain_factory`` over TLS or plain text, decided per connection."""

    def __init__(self, creator: Any, plain_factory: Any, *, clock: Any = None,
                 peek_timeout: float = DEFAULT_PEEK_TIMEOUT,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.peek_timeout = peek_timeout
        self.plain_factory = plain_factory
        self.tls_factory = DeadlineTLSFactory(creator, plain_factory, clock=clock,
                                              handshake_timeout=handshake_timeout)
        self.tls_connections = 0
        self.plain_connections = 0
        self.peek_timeouts = 0

    @property
    def handshake_timeouts(self) -> int:
        return self.tls_factory.handshake_timeouts

    def doStart(self) -> None:
        super().doStart()
        self.plain_factory.doStart()

    def doStop(self) -> None:
        self.plain_factory.doStop()
        super().doStop()

    #: a hook before the TLS-or-plain dispatch (the main port's L4 router,
    #: nbgateway.l4): ``front(addr)`` returns the protocol of a new connection,
    #: or None for the usual dispatch; it hands HTTP back through :meth:`sniffer`
    front: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        if self.front is not None:
            protocol = self.front(addr)
            if protocol is not None:
                return protocol
        return self.sniffer(addr)

    def sniffer(self, addr: Any) -> _Sniffer:
        """The TLS-or-plain protocol of one connection."""
        return _Sniffer(self, addr)
