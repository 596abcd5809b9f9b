"""DNS responder for an account's synthetic zones (twisted.names, UDP + TCP).

:class:`DNSResponderFactory` is a ``twisted.names.server.DNSServerFactory``
that answers every query synchronously from a
:class:`~nbgateway.dns.zone.ZoneAuthority` (see there for NOERROR / NODATA /
NXDOMAIN / REFUSED rules).  It never recurses (RA is clear) and never
forwards: names outside the zones answer REFUSED.

Transports:

* UDP: :class:`DNSResponderDatagramProtocol`; on the tunnel with
  ``nbgateway.netstack.udp.listen_udp(stack, 53, proto, interface=ip)``, on
  the host with ``reactor.listenUDP``.  A response larger than the client's
  limit (512 bytes, or the EDNS0 UDP payload size it advertised, capped at
  :data:`MAX_UDP_PAYLOAD`) is sent with the TC bit and without records, so
  the client retries over TCP.
* TCP: the factory itself (``DNSServerFactory`` builds a length-prefixed
  ``DNSProtocol`` per connection), e.g.
  ``TunnelServerEndpoint(stack, 53, interface=ip).listen(factory)`` or any host
  endpoint.  At most ``max_connections`` concurrent connections (others are
  refused at accept), each closed after ``idle_timeout`` seconds without a
  complete query.

Bounded and fail-safe: exactly one question per query (else FORMERR),
opcodes other than QUERY -> NOTIMP (a real response, unlike twisted's default
handlers, which echo the request), response messages
received by the server are dropped (no reflection), malformed packets are
counted and dropped without per-packet log lines, and nothing raised while
answering reaches the reactor.  :func:`listen_dns` binds both transports on a
tunnel address; :meth:`DNSResponderFactory.replace_zones` swaps the zones.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.names import dns, resolve, server
from twisted.protocols.policies import TimeoutMixin

from nbgateway.dns.zone import ZoneAuthority
from nbgateway.mgmt.netmap import DnsZone

__all__ = [
    "DEFAULT_UDP_PAYLOAD",
    "MAX_UDP_PAYLOAD",
    "DNSListeners",
    "DNSResponderDatagramProtocol",
    "DNSResponderFactory",
    "listen_dns",
]

log = Logger()

#: RFC 1035 4.2.1 UDP limit without EDNS0
DEFAULT_UDP_PAYLOAD = 512
#: cap on an EDNS0-advertised payload size (the DNS flag day 2020 value; below the tunnel MTU)
MAX_UDP_PAYLOAD = 1232
MAX_QUERY_BYTES = 4096
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_IDLE_TIMEOUT = 30.0
_RCODE_NAMES = {dns.OK: "noerror", dns.ENAME: "nxdomain", dns.EREFUSED: "refused",
                dns.EFORMAT: "formerr"}


#: the (never consulted) resolver of every responder, see DNSResponderFactory
_NO_RESOLVER = resolve.ResolverChain([])


class _TCPProtocol(dns.DNSProtocol, TimeoutMixin):
    """DNS over TCP with an idle timeout and quiet, counted parse errors."""

    MAX_LENGTH = MAX_QUERY_BYTES  # Int16StringReceiver: longer strings close the connection

    def connectionMade(self) -> None:
        super().connectionMade()
        self.setTimeout(self.controller.idle_timeout)

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)

    def stringReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.controller._parse_and_dispatch(data, self, None)

    def lengthLimitExceeded(self, length: int) -> None:
        self.controller.counters["oversized"] += 1
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        self.controller.counters["tcp_idle_timeout"] += 1
        self.transport.abortConnection()


class DNSResponderDatagramProtocol(dns.DNSDatagramProtocol):
    """The UDP side: parse, drop garbage quietly, hand queries to the factory."""

    def __init__(self, controller: DNSResponderFactory, reactor: Any = None) -> None:
        super().__init__(controller, reactor=reactor if reactor is not None else controller.clock)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.controller._parse_and_dispatch(data, self, addr)


class DNSResponderFactory(server.DNSServerFactory):
    """Authoritative-only responder over a :class:`ZoneAuthority`."""

    protocol = _TCPProtocol  # type: ignore[assignment]

    def __init__(
        self,
        authority: ZoneAuthority | None = None,
        *,
        clock: IReactorTime | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        # DNSServerFactory.__init__ without its resolver chain: handleQuery
        # answers from the authority and never consults ``resolver``, so every
        # account shares one empty chain (twisted.names binds ~25 lookup
        # methods per resolver instance: ~2.5 KiB an account)
        self.canRecurse = False
        self.resolver = _NO_RESOLVER
        self.verbose = 0
        self.connections: list[Any] = []
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock = clock
        self.authority = authority if authority is not None else ZoneAuthority()
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.counters: Counter[str] = Counter()

    # -- zones ------------------------------------------------------------------------

    def replace_zones(self, zones: Iterable[DnsZone], serial: int | None = None) -> None:
        self.authority.replace(zones, serial)

    # -- connections --------------------------------------------------------------------

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.connections) >= self.max_connections:
            self.counters["tcp_refused"] += 1
            return None
        p = self.protocol(self, reactor=self.clock)
        p.factory = self
        return p

    def datagram_protocol(self) -> DNSResponderDatagramProtocol:
        return DNSResponderDatagramProtocol(self)

    # -- messages -------------------------------------------------------------------------

    def _parse_and_dispatch(self, data: bytes, proto: Any, addr: tuple[str, int] | None) -> None:
        if len(data) > MAX_QUERY_BYTES:
            self.counters["oversized"] += 1
            return
        message = dns.Message()
        try:
            message.fromStr(data)
        except Exception:
            self.counters["malformed"] += 1
            return
        if message.answer:  # a response sent to a server: never answer those
            self.counters["unexpected_response"] += 1
            return
        # twisted.names' sendReply logs the processing time from this
        message.timeReceived = time.time()
        try:
            self.messageReceived(message, proto, addr)
        except Exception:
            self.counters["error"] += 1
            log.failure("DNS responder failed to answer a query")

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> None:
        if len(message.queries) != 1:
            self.counters["formerr"] += 1
            self._reply(protocol, message, address, dns.EFORMAT)
            return
        q = message.queries[0]
        ans = self.authority.lookup(q.name.name, q.type, q.cls)
        self.counters[_RCODE_NAMES.get(ans.rcode, f"rcode_{ans.rcode}")] += 1
        self._reply(protocol, message, address, ans.rcode, list(ans.answers),
                    list(ans.authority), ans.authoritative)

    def _reply(
        self, protocol: Any, message: dns.Message, address: Any, rcode: int,
        answers: list[dns.RRHeader] | None = None, authority: list[dns.RRHeader] | None = None,
        auth: bool = False,
    ) -> None:
        response = self._responseFromMessage(message, rCode=rcode, answers=answers,
                                             authority=authority)
        response.auth = auth
        response.opCode = message.opCode
        response.recDes = message.recDes
        response.maxSize = 0  # twisted's own truncation cuts mid-record; see below
        if address is not None:
            limit = _udp_limit(message)
            if len(response.toStr()) > limit:
                self.counters["truncated"] += 1
                response.trunc = 1
                response.answers, response.authority, response.additional = [], [], []
        self.sendReply(protocol, response, address)

    def sendReply(self, protocol: Any, message: dns.Message, address: Any) -> None:
        try:
            super().sendReply(protocol, message, address)
        except Exception as exc:
            self.counters["send_error"] += 1
            log.debug("DNS reply not sent: {error}", error=exc)

    def messageReceived(self, message: dns.Message, proto: Any, address: Any = None) -> None:
        """Dispatch by opcode.  Twisted's own handlers for the other opcodes echo
        the request with only the rcode changed (QR clear: a "query" sent back,
        a reflection risk); here they get a proper NOTIMP response."""
        self.counters["queries"] += 1
        if message.opCode == dns.OP_QUERY:
            self.handleQuery(message, proto, address)
        else:
            self.counters["notimp"] += 1
            self._reply(proto, message, address, dns.ENOTIMP)


def _udp_limit(message: dns.Message) -> int:
    for rr in message.additional:
        if rr.type == dns.OPT:
            return max(DEFAULT_UDP_PAYLOAD, min(int(rr.cls), MAX_UDP_PAYLOAD))
    return DEFAULT_UDP_PAYLOAD


@dataclass
class DNSListeners:
    """The UDP port and TCP listening port of one responder."""

    udp: Any
    tcp: Any

    def stop(self) -> defer.Deferred[None]:
        ds = [defer.maybeDeferred(p.stopListening) for p in (self.udp, self.tcp) if p]
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)


def listen_dns(
    stack: Any, factory: DNSResponderFactory, interface: str, port: int = 53,
) -> defer.Deferred[DNSListeners]:
    """Serve ``factory`` on ``interface:port`` of a tunnel netstack (UDP and
    TCP); the Deferred fails (and nothing stays bound) if either cannot bind."""
    from nbgateway.netstack.endpoints import TunnelServerEndpoint
    from nbgateway.netstack.udp import listen_udp

    try:
        udp = listen_udp(stack, port, factory.datagram_protocol(), interface=interface)
    except Exception:
        return defer.fail()

    def bound(tcp: Any) -> DNSListeners:
        return DNSListeners(udp, tcp)

    def failed(reason: Any) -> Any:
        udp.stopListening()
        return reason

    d = TunnelServerEndpoint(stack, port, interface=interface).listen(factory)
    return d.addCallbacks(bound, failed)
