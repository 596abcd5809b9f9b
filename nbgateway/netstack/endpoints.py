"""Twisted stream endpoints over a netstack (``IStreamServerEndpoint`` /
``IStreamClientEndpoint``) and the matching ``IListeningPort``.

``TunnelServerEndpoint(stack, port, interface=addr, backlog=...)`` listens on
a tunnel address of ``stack`` (``interface`` None or "" = every stack
address); ``TunnelClientEndpoint(stack, host, port, timeout=...)`` dials a
peer through the tunnel: the Deferred fires with the protocol once the
handshake completes, or fails with ``ConnectionRefusedError`` (RST),
``TimeoutError`` (``timeout`` seconds, default 30), ``TCPTimedOutError``
(SYN retries exhausted) or ``ConnectingCancelledError`` (cancelled).
:class:`TunnelAgentEndpointFactory` plugs the client endpoint into
``twisted.web.client.Agent.usingEndpointFactory``.

``stack`` is a :class:`~nbgateway.netstack.stack.Stack` (its ``tcp``
attribute is used) or a :class:`~nbgateway.netstack.tcp.TCPLayer`.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer, error, interfaces
from twisted.logger import Logger
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from nbgateway.netstack.tcp import DEFAULT_BACKLOG, DEFAULT_MAX_HALF_OPEN, Listener, TCPLayer
from nbgateway.netstack.tcp_conn import Connection
from nbgateway.netstack.tcp_const import CLOSED
from nbgateway.netstack.transport import TunnelTCPTransport, tunnel_address

log = Logger()


def _layer(stack: Any) -> TCPLayer:
    return stack if isinstance(stack, TCPLayer) else stack.tcp


def _ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(value, bytes):
        value = value.decode("ascii")
    return ipaddress.ip_address(value)


@implementer(interfaces.IListeningPort)
class TunnelListeningPort:
    """A listening netstack port; ``pauseAccepting``/``resumeAccepting``
    let established connections wait in the bounded accept queue."""

    def __init__(self, layer: TCPLayer, factory: Any, port: int, interface: Any,
                 backlog: int, max_half_open: int) -> None:
        self.layer = layer
        self.factory = factory
        self.port = port
        self.interface = interface
        self.backlog = backlog
        self.max_half_open = max_half_open
        self.listener: Listener | None = None

    def __repr__(self) -> str:
        return f"<TunnelListeningPort {self.interface or '*'}:{self.port} {self.factory!r}>"

    def startListening(self) -> None:
        if self.listener is not None:
            return
        self.listener = self.layer.listen(self.port, self._accept, address=self.interface,
                                          backlog=self.backlog,
                                          max_half_open=self.max_half_open)
        self.factory.doStart()

    def stopListening(self) -> defer.Deferred[None]:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
            self.factory.doStop()
        return defer.succeed(None)

    def getHost(self) -> Any:
        ip = self.interface
        if ip is None:
            ip = self.layer.stack.addresses[0]
        port = self.listener.port if self.listener is not None else self.port
        return tunnel_address(ip, port)

    def pauseAccepting(self) -> None:
        if self.listener is not None:
            self.listener.pause()

    def resumeAccepting(self) -> None:
        if self.listener is not None:
            self.listener.resume()

    def _accept(self, conn: Connection) -> TunnelTCPTransport | None:
        try:
            protocol = self.factory.buildProtocol(tunnel_address(conn.remote, conn.rport))
        except Exception:
            log.failure("buildProtocol raised for {port!r}", port=self)
            return None
        if protocol is None:
            return None
        transport = TunnelTCPTransport(conn, protocol)
        transport.makeConnection(protocol)
        return transport


@implementer(interfaces.IStreamServerEndpoint)
class TunnelServerEndpoint:
    def __init__(self, stack: Any, port: int, interface: Any = None,
                 backlog: int = DEFAULT_BACKLOG,
                 max_half_open: int = DEFAULT_MAX_HALF_OPEN) -> None:
        self.layer = _layer(stack)
        self.port = port
        self.interface = _ip(interface) if interface not in (None, "", b"") else None
        self.backlog = backlog
        self.max_half_open = max_half_open

    def listen(self, protocolFactory: Any) -> defer.Deferred[TunnelListeningPort]:
        port = TunnelListeningPort(self.layer, protocolFactory, self.port, self.interface,
                                   self.backlog, self.max_half_open)
        try:
            port.startListening()
        except Exception:
            return defer.fail()
        return defer.succeed(port)


class _Connecting:
    """The TCPUser of a connection until its handshake completes."""

    def __init__(self, endpoint: TunnelClientEndpoint, factory: Any) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.conn: Connection | None = None
        self.deferred: defer.Deferred[Any] = defer.Deferred(self._cancel)
        self.timeout_call: Any = None

    def start(self) -> defer.Deferred[Any]:
        ep = self.endpoint
        try:
            self.conn = ep.layer.connect(ep.host, ep.port, self, local=ep.bind_address)
        except Exception:
            return defer.fail()
        if ep.timeout is not None:
            self.timeout_call = ep.layer.clock.callLater(ep.timeout, self._timed_out)
        return self.deferred

    def _finish(self) -> None:
        if self.timeout_call is not None and self.timeout_call.active():
            self.timeout_call.cancel()
        self.timeout_call = None

    def _abort(self) -> None:
        conn = self.conn
        if conn is not None and conn.state != CLOSED:
            conn.user = None
            conn.abort(self.endpoint.layer.clock.seconds())

    def _cancel(self, d: defer.Deferred[Any]) -> None:
        self._finish()
        self._abort()
        d.errback(error.ConnectingCancelledError(self._address()))

    def _timed_out(self) -> None:
        self.timeout_call = None
        self._abort()
        if not self.deferred.called:
            self.deferred.errback(error.TimeoutError(string="connection through the tunnel"))

    def _address(self) -> Any:
        return tunnel_address(self.endpoint.host, self.endpoint.port)

    def tcp_established(self) -> None:
        self._finish()
        conn = self.conn
        assert conn is not None
        try:
            protocol = self.factory.buildProtocol(tunnel_address(conn.remote, conn.rport))
        except Exception:
            self._abort()
            self.deferred.errback()
            return
        if protocol is None:
            self._abort()
            self.deferred.errback(error.ConnectError(string="buildProtocol returned None"))
            return
        transport = TunnelTCPTransport(conn, protocol)
        transport.makeConnection(protocol)
        self.deferred.callback(protocol)

    def tcp_closed(self, reason: Exception | None) -> None:
        self._finish()
        if not self.deferred.called:
            self.deferred.errback(reason or error.ConnectionRefusedError())

    def tcp_data(self, data: bytes) -> None:  # pragma: no cover - not before established
        pass

    def tcp_eof(self) -> None:  # pragma: no cover
        pass

    def tcp_fin_acked(self) -> None:  # pragma: no cover
        pass

    def tcp_writable(self) -> None:  # pragma: no cover
        pass


@implementer(interfaces.IStreamClientEndpoint)
class TunnelClientEndpoint:
    def __init__(self, stack: Any, host: Any, port: int, timeout: float | None = 30,
                 bindAddress: Any = None) -> None:
        self.layer = _layer(stack)
        self.host = _ip(host)
        self.port = port
        self.timeout = timeout
        self.bind_address = _ip(bindAddress) if bindAddress else None

    def connect(self, protocolFactory: Any) -> defer.Deferred[Any]:
        return _Connecting(self, protocolFactory).start()


@implementer(IAgentEndpointFactory)
class TunnelAgentEndpointFactory:
    """``IAgentEndpointFactory`` for ``Agent.usingEndpointFactory``: http
    URIs dial through the tunnel; https wraps the endpoint with
    ``contextFactory.creatorForNetloc`` like Twisted's own factory."""

    def __init__(self, stack: Any, timeout: float | None = 30, contextFactory: Any = None,
                 resolve: Any = None) -> None:
        self.stack = stack
        self.timeout = timeout
        self.contextFactory = contextFactory
        self.resolve = resolve  # optional host name -> tunnel IP string mapping

    def endpointForURI(self, uri: Any) -> Any:
        host = uri.host.decode("ascii") if isinstance(uri.host, bytes) else uri.host
        host = host.strip("[]")
        if self.resolve is not None:
            host = self.resolve(host)
        ep: Any = TunnelClientEndpoint(self.stack, host, uri.port, timeout=self.timeout)
        if uri.scheme == b"https":
            from twisted.internet.endpoints import wrapClientTLS
            from twisted.web.client import BrowserLikePolicyForHTTPS

            policy = self.contextFactory or BrowserLikePolicyForHTTPS()
            ep = wrapClientTLS(policy.creatorForNetloc(uri.host, uri.port), ep,
                               clock=_layer(self.stack).clock)
        return ep
