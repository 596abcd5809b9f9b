"""The TCP splice between an accepted connection and its upstream.

:class:`TCPRelay` owns two transports once both exist: bytes from one are
written to the other; each transport is registered as the other's streaming
producer, so a full write buffer on either side pauses reading on the other
(no unbounded buffers, both ways).  EOF on one side becomes a write shutdown
on the other (half-close); a side whose reading *and* writing are both over
is closed.  An idle watchdog on the injected clock aborts both sides when no
byte moved in either direction for ``idle_timeout`` seconds.  When the relay
ends, ``on_end(relay)`` is called once (access log, counters).

The accepted side is not a protocol of this module: the router's protocol
forwards ``dataReceived``/``readConnectionLost``/``connectionLost`` here
through :meth:`client_data`, :meth:`client_eof` and :meth:`client_lost`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import interfaces
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()


@implementer(interfaces.IHalfCloseableProtocol)
class _Upstream(Protocol):
    def __init__(self, relay: TCPRelay) -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        self.relay.upstream_connected(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.relay.upstream_data(data)

    def readConnectionLost(self) -> None:
        self.relay.upstream_eof()

    def writeConnectionLost(self) -> None:
        self.relay.write_done("upstream")

    def connectionLost(self, reason: Any = None) -> None:
        self.relay.upstream_lost(reason)


class UpstreamFactory(Factory):
    """Builds the one upstream protocol of a relay."""

    def __init__(self, relay: TCPRelay) -> None:
        self.relay = relay

    def buildProtocol(self, addr: Any) -> _Upstream:
        return _Upstream(self.relay)


class TCPRelay:
    """One relayed connection.  ``client`` is the accepted transport;
    ``preamble`` is written to the upstream before anything else (a PROXY
    header), ``pending`` are the client bytes already read (replayed)."""

    def __init__(self, client: Any, *, clock: Any, idle_timeout: float,
                 on_end: Callable[[TCPRelay], None] | None = None,
                 preamble: bytes = b"", pending: bytes = b"",
                 service_id: str = "") -> None:
        self.client = client
        self.upstream: Any = None
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.on_end = on_end
        self.service_id = service_id
        self._pending = [preamble, pending] if preamble else [pending]
        self.started = clock.seconds()
        self.last_activity = self.started
        self.bytes_up = 0  # client -> upstream
        self.bytes_down = 0  # upstream -> client
        self.close_reason = ""
        self.ended = False
        self._client_eof = False
        self._upstream_eof = False
        self._write_closed = {"client": False, "upstream": False}
        self._watchdog: Any = None
        self._arm(idle_timeout)

    # ------------------------------------------------------------------ watchdog

    def _arm(self, delay: float) -> None:
        if self.idle_timeout > 0:
            self._watchdog = self.clock.callLater(max(delay, 0.01), self._check_idle)

    def _check_idle(self) -> None:
        self._watchdog = None
        if self.ended:
            return
        idle_for = self.clock.seconds() - self.last_activity
        if idle_for >= self.idle_timeout:
            self.abort("idle_timeout")
        else:
            self._arm(self.idle_timeout - idle_for)

    # ------------------------------------------------------------------ client side

    def client_data(self, data: bytes) -> None:
        self.last_activity = self.clock.seconds()
        self.bytes_up += len(data)
        if self.upstream is None:
            self._pending.append(data)  # bounded: the client is paused while dialing
        else:
            self.upstream.write(data)

    def client_eof(self) -> None:
        self._client_eof = True
        if self.upstream is not None:
            self.upstream.loseWriteConnection()
        self._maybe_close("client")

    def client_lost(self, reason: Any = None) -> None:
        self._finish("client_closed" if not self.close_reason else self.close_reason)
        if self.upstream is not None:
            self.upstream.loseConnection()

    # ------------------------------------------------------------------ upstream side

    def upstream_connected(self, transport: Any) -> None:
        if self.ended:
            transport.abortConnection()
            return
        self.upstream = transport
        self.last_activity = self.clock.seconds()
        pending, self._pending = b"".join(self._pending), []
        if pending:
            transport.write(pending)
        if self._client_eof:
            transport.loseWriteConnection()
        # backpressure both ways: a full write buffer pauses the other side's reads
        transport.registerProducer(self.client, True)
        self.client.registerProducer(transport, True)
        self.client.resumeProducing()

    def upstream_data(self, data: bytes) -> None:
        self.last_activity = self.clock.seconds()
        self.bytes_down += len(data)
        self.client.write(data)

    def upstream_eof(self) -> None:
        self._upstream_eof = True
        self.client.loseWriteConnection()
        self._maybe_close("upstream")

    def upstream_lost(self, reason: Any = None) -> None:
        if not self.ended:
            self._finish(self.close_reason or "upstream_closed")
        self.client.loseConnection()

    # ------------------------------------------------------------------ shared

    def write_done(self, side: str) -> None:
        self._write_closed[side] = True
        self._maybe_close(side)

    def _maybe_close(self, side: str) -> None:
        eof = self._client_eof if side == "client" else self._upstream_eof
        transport = self.client if side == "client" else self.upstream
        if eof and self._write_closed[side] and transport is not None:
            transport.loseConnection()

    def abort(self, reason: str) -> None:
        """Reset both sides now (idle watchdog, route removed, shutdown)."""
        if self.ended:
            return
        self.close_reason = reason
        self._finish(reason)
        for transport in (self.client, self.upstream):
            if transport is not None:
                try:
                    transport.abortConnection()
                except Exception:
                    log.failure("aborting a relayed connection")

    def _finish(self, reason: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.close_reason = self.close_reason or reason
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        if self.on_end is not None:
            try:
                self.on_end(self)
            except Exception:
                log.failure("L4 relay end hook raised")

    @property
    def duration(self) -> float:
        return max(0.0, self.clock.seconds() - self.started)
