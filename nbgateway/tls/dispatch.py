"""TLS-or-plain dispatch on one listening port (spec proxy.md 5: both inbound
ports accept TLS and plain HTTP; acceptance 54).

:class:`TLSOrPlainFactory` wraps a plain (HTTP) server factory.  Each
connection waits for its first byte: ``0x16`` (a TLS handshake record) gets a
TLS-terminating protocol (``TLSMemoryBIOFactory`` with the given server
connection creator) around the plain protocol; anything else goes straight to
the plain protocol.  A client that sends nothing within ``peek_timeout``
seconds is disconnected (one deadline per connection, on the injected
clock).  Every connection is handled independently, so a silent client never
delays others (hardening over upstream's serial :80 feeder, spec 11.12).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

log = Logger()

TLS_HANDSHAKE = 0x16
DEFAULT_PEEK_TIMEOUT = 5.0


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
                 peek_timeout: float = DEFAULT_PEEK_TIMEOUT) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.peek_timeout = peek_timeout
        self.plain_factory = plain_factory
        self.tls_factory = TLSMemoryBIOFactory(creator, False, plain_factory)
        self.tls_connections = 0
        self.plain_connections = 0
        self.peek_timeouts = 0

    def doStart(self) -> None:
        super().doStart()
        self.plain_factory.doStart()

    def doStop(self) -> None:
        self.plain_factory.doStop()
        super().doStop()

    def buildProtocol(self, addr: Any) -> _Sniffer:
        return _Sniffer(self, addr)
