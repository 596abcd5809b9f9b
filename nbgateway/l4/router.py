"""A port router: what happens to one accepted L4 connection.

:class:`PortRouter` is the ``ServerFactory`` of one listening port (a host
port for public L4, a tunnel port for private L4).  It holds the port's
routes: TLS routes by server name and at most one fallback (a TCP service).
Per accepted connection (:class:`L4ServerProtocol`):

1. with ``--proxy-protocol`` (public listeners), read an inbound PROXY v1/v2
   header: sources in the trusted list must send one (else closed), others'
   headers are read and their addresses ignored; no trusted list = any source
   may (the operator was warned at start);
2. when the port has TLS routes, peek the ClientHello's server name; a
   fallback-only port skips the peek;
3. pick the route (SNI route, else the fallback, else close), check its
   access restrictions and, for a private service, the private gate;
4. dial the target (through the account's tunnel, or the host network for
   ``direct_upstream``) and splice (:class:`~nbgateway.l4.relay.TCPRelay`);
   the bytes read so far are replayed, after a PROXY v2 header when the
   target asks for one.

Steps 1-2 share one deadline (``HEADER_TIMEOUT``, 5 s): a slow sender is cut.
At most :data:`MAX_RELAYS` connections are live per router; beyond that a new
connection is closed at once (log line, ``limit_hits`` counter).  A router
whose routes belong to more than one account (the main port, or a host port
several accounts' TCP/TLS services share) gives one account at most half of
its relays (:meth:`PortRouter.account_at_limit`, ``account_limit_hits``), so
one tenant's clients cannot take every relay from the others.  Routers of one
gateway may also share a per-account total (``totals``/``max_total``, the
manager's): one account's live relays over all its ports stay bounded too.

The main port (the public HTTP/HTTPS listener) has a router too, with an
``http_factory`` (the port's ``TLSOrPlainFactory``, the HTTP channel) whose
``front`` hook asks :meth:`PortRouter.front` first: with no L4 route (and no
``--proxy-protocol``) every connection takes the usual TLS-or-plain path;
otherwise the ClientHello is peeked and a
server name served by an HTTP route goes to the HTTP channel (HTTP routes
beat TCP routes), a TLS route's name to its relay, anything else to the
fallback relay if there is one, else to the HTTP channel.  Bytes read so far
are replayed to whichever side takes the connection, and a client address
from a trusted PROXY header is what the HTTP channel sees as the peer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import interfaces
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import directlyProvides, implementer, providedBy

from nbgateway.l4.proxyproto import NOT_PROXY, ProxyHeaderReader, ProxyProtocolError, encode_v2
from nbgateway.l4.relay import TCPRelay, UpstreamFactory
from nbgateway.l4.sni import MAX_PEEK, PEEK_TIMEOUT, SNIPeeker
from nbgateway.l4.stats import L4Stats
from nbgateway.l4.target import L4Target
from nbgateway.routes.restrictions import parse_ip

log = Logger()

#: live relays per router
MAX_RELAYS = 4096
HEADER_TIMEOUT = PEEK_TIMEOUT

#: (target, client ip) -> Deferred[(allowed, reason, user_id, groups)] for private targets
Gate = Callable[[L4Target, str], Deferred]
#: (target) -> IStreamClientEndpoint or raises
Dial = Callable[[L4Target], Any]


class PortRouter(Factory):
    """Routes of one listening port and the relays they carry."""

    def __init__(self, port: int, *, clock: Any, dial: Dial, stats: L4Stats,
                 gate: Gate | None = None, on_relay_end: Callable[[Any], None] | None = None,
                 proxy_protocol: bool = False,
                 trusted: Callable[[str], bool] | None = None,
                 max_relays: int = MAX_RELAYS, account_id: str | None = None,
                 http_factory: Any = None,
                 http_lookup: Callable[[str], bool] | None = None,
                 totals: dict[str, int] | None = None, max_total: int = 0) -> None:
        self.port = port
        #: the main port's HTTP channel (None on an L4-only port)
        self.http_factory = http_factory
        self.http_lookup = http_lookup
        self.clock = clock
        self.dial = dial
        self.stats = stats
        self.gate = gate
        self.on_relay_end = on_relay_end
        self.proxy_protocol = proxy_protocol
        self.trusted = trusted
        self.max_relays = max_relays
        #: source address -> its connections still before their route (see source_cap)
        self.pending_sources: dict[str, int] = {}
        self.account_id = account_id  # the tunnel listener's account (private), else None
        self.sni_routes: dict[str, L4Target] = {}
        self.fallback: L4Target | None = None
        #: live connections (a dict as an ordered set: 64 B empty, a set 216 B)
        self.connections: dict[L4ServerProtocol, None] = {}
        #: live relays per account (the target's), see :meth:`account_at_limit`
        self.account_relays: dict[str, int] = {}
        #: live relays per account over every router sharing this dict
        #: (None: not shared), at most ``max_total`` each (0: no bound)
        self.totals = totals
        self.max_total = max_total
        self.listening: Any = None  # the IListeningPort once bound
        #: the tunnel (netstack) a private router's listener is bound on; a
        #: re-created tunnel is a different object and needs a new listener
        self.tunnel: Any = None
        self.linger: Any = None  # the delayed close of a port without routes

    # ------------------------------------------------------------------ routes

    def targets(self) -> list[L4Target]:
        out = list(self.sni_routes.values())
        if self.fallback is not None:
            out.append(self.fallback)
        return out

    @property
    def empty(self) -> bool:
        return not self.sni_routes and self.fallback is None

    def set_route(self, target: L4Target) -> None:
        if target.mode == "tls":
            self.sni_routes[target.domain] = target
        else:
            self.fallback = target

    def remove_service(self, service_id: str) -> int:
        """Drop ``service_id``'s routes and close its live connections."""
        for name, t in list(self.sni_routes.items()):
            if t.service_id == service_id:
                del self.sni_routes[name]
        if self.fallback is not None and self.fallback.service_id == service_id:
            self.fallback = None
        closed = 0
        for conn in list(self.connections):
            if conn.target is not None and conn.target.service_id == service_id:
                conn.abort("route_removed")
                closed += 1
        return closed

    def choose(self, server_name: str) -> L4Target | None:
        if server_name:
            hit = self.sni_routes.get(server_name)
            if hit is not None:
                return hit
        return self.fallback

    # ------------------------------------------------------------------ Factory

    def at_limit(self) -> bool:
        """Refuse one more relay?  (Logs and counts when so.)"""
        live = len(self.connections) if self.http_factory is None else \
            sum(1 for c in self.connections if c.relay is not None)
        if live < self.max_relays:
            return False
        self.stats.limit_hits += 1
        if self.stats.limit_hits == 1 or self.stats.limit_hits % 1000 == 0:
            log.warn("TCP relay connection limit reached on port {port} ({limit} live); "
                     "refusing new connections ({hits} so far)", port=self.port,
                     limit=self.max_relays, hits=self.stats.limit_hits)
        return True

    def account_at_limit(self, account_id: str) -> bool:
        """Refuse ``account_id`` one more relay?  On a router whose routes
        belong to several accounts, one account holds at most half of
        ``max_relays`` (logs and counts when refused); a router serving one
        account's routes only gives it all of them."""
        totals = self.totals
        if (totals is not None and self.max_total
                and totals.get(account_id, 0) >= self.max_total):
            self._account_refused(account_id, f"its {self.max_total} TCP relays over all "
                                  "its ports")
            return True
        held = self.account_relays.get(account_id, 0)
        if held < max(1, self.max_relays // 2):
            return False
        if len({t.account_id for t in self.targets()}) < 2:
            return False
        self._account_refused(account_id, f"half of port {self.port}'s TCP relays ({held})")
        return True

    def _account_refused(self, account_id: str, what: str) -> None:
        self.stats.account_limit_hits += 1
        if self.stats.account_limit_hits == 1 or self.stats.account_limit_hits % 1000 == 0:
            log.warn("account {account} holds {what}; refusing its new connections "
                     "({hits} so far)", account=account_id, what=what,
                     hits=self.stats.account_limit_hits)

    def _relay_taken(self, account_id: str) -> None:
        self.account_relays[account_id] = self.account_relays.get(account_id, 0) + 1
        if self.totals is not None:
            self.totals[account_id] = self.totals.get(account_id, 0) + 1

    def _relay_released(self, account_id: str) -> None:
        for counts in (self.account_relays, self.totals):
            if counts is None:
                continue
            held = counts.get(account_id, 0) - 1
            if held > 0:
                counts[account_id] = held
            else:
                counts.pop(account_id, None)

    def front(self, addr: Any) -> Protocol | None:
        """The main port's hook (``TLSOrPlainFactory.front``): this router's
        protocol when it has L4 routes or reads PROXY headers, else None (the
        usual TLS-or-plain dispatch, untouched)."""
        if self.empty and not self.proxy_protocol:
            return None
        return self.buildProtocol(addr)

    def source_cap(self) -> int:
        """Connections one source address may have before their route (the
        PROXY header or SNI peek, up to HEADER_TIMEOUT each): silent
        connections count against ``max_relays``, so without a share one
        address could refuse every tenant of a shared port."""
        return max(2, self.max_relays // 64)

    def buildProtocol(self, addr: Any) -> Protocol | None:
        if self.http_factory is None and self.at_limit():
            return None  # Twisted closes the accepted socket
        host = getattr(addr, "host", None)
        if host is not None and self.http_factory is None and not self.proxy_protocol:
            # (behind a PROXY-protocol balancer every connection has its address)
            held = self.pending_sources.get(host, 0)
            if held >= self.source_cap():
                self.stats.source_limit_hits += 1
                if self.stats.source_limit_hits == 1 or self.stats.source_limit_hits % 1000 == 0:
                    log.warn("{source} holds {held} connections before their route on port "
                             "{port}; refusing its new ones ({hits} so far)", source=host,
                             held=held, port=self.port, hits=self.stats.source_limit_hits)
                return None
            self.pending_sources[host] = held + 1
        else:
            host = None
        proto = L4ServerProtocol(self)
        proto.addr = addr
        proto._pending_source = host
        self.connections[proto] = None
        return proto

    def _source_routed(self, host: str) -> None:
        held = self.pending_sources.get(host, 0) - 1
        if held > 0:
            self.pending_sources[host] = held
        else:
            self.pending_sources.pop(host, None)

    def close_all(self, reason: str = "shutdown") -> None:
        for conn in list(self.connections):
            conn.abort(reason)

    def revalidate(self) -> int:
        """Ask the private gate again for every live relay of this (private)
        router: the account's access changed (a user blocked, a peer out of
        the access groups) and the gate was asked only when each connection
        began.  A relay the gate no longer allows is closed
        (``access_revoked``).  Returns how many relays were asked about."""
        gate = self.gate
        if gate is None or self.account_id is None:
            return 0
        asked = 0
        for conn in list(self.connections):
            target = conn.target
            if target is None or not target.private or conn.relay is None:
                continue
            asked += 1
            d = maybeDeferred(gate, target, conn.source[0])
            d.addCallbacks(conn._regated,
                           lambda f, c=conn: c._regated((False, "gate_error", "", ())))
        return asked


@implementer(interfaces.IHalfCloseableProtocol)
class L4ServerProtocol(Protocol):
    """One accepted connection: header/peek phase, then the relay."""

    def __init__(self, router: PortRouter) -> None:
        self.router = router
        self.state = "new"
        self.target: L4Target | None = None
        self.relay: TCPRelay | None = None
        self.source: tuple[str, int] = ("", 0)
        self.buffer = b""
        self._proxy: ProxyHeaderReader | None = None
        self._peeker: SNIPeeker | None = None
        self._deadline: Any = None
        self._eof = False
        self.user_id = ""
        self.groups: tuple[str, ...] = ()
        self.close_reason = ""
        self.started = router.clock.seconds()
        self.addr: Any = None
        self.http: Any = None  # the HTTP channel's protocol once handed over
        #: the source address counted in router.pending_sources until routed
        self._pending_source: str | None = None
        self._proxied_peer = False
        #: the account whose relay count this connection holds (see _dial)
        self._held: str | None = None

    # ------------------------------------------------------------------ phases

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.source = (str(getattr(peer, "host", "")), int(getattr(peer, "port", 0) or 0))
        self.router.stats.accepted += 1
        needs_header = self.router.proxy_protocol
        if needs_header:
            self._proxy = ProxyHeaderReader()
            self.state = "proxy"
        elif self.router.sni_routes or self.router.http_factory is not None:
            self.state = "peek"
            self._peeker = SNIPeeker()
        else:
            self.state = "route"
        if self.state in ("proxy", "peek"):
            self._deadline = self.router.clock.callLater(HEADER_TIMEOUT, self._timed_out)
        else:
            self._route("")

    def _timed_out(self) -> None:
        self._deadline = None
        self.router.stats.header_timeouts += 1
        self._close("header_timeout")

    def dataReceived(self, data: bytes) -> None:
        if self.http is not None:
            self.http.dataReceived(data)
            return
        if self.relay is not None:
            self.relay.client_data(data)
            return
        if self.state == "proxy":
            self._feed_proxy(data)
        elif self.state == "peek":
            self._feed_peek(data)
        elif self.state in ("gate", "dialing"):
            self.buffer += data
            if len(self.buffer) > MAX_PEEK + 65536:
                self._close("buffer_overflow")

    def _feed_proxy(self, data: bytes) -> None:
        assert self._proxy is not None
        trusted = self.router.trusted
        try:
            out = self._proxy.feed(data)
        except ProxyProtocolError as exc:
            self.router.stats.bad_input += 1
            log.debug("bad PROXY header from {src}: {err}", src=self.source[0], err=str(exc))
            self._close("bad_proxy_header")
            return
        if out is None:
            return
        header, rest = out
        is_trusted = trusted is None or trusted(self.source[0])
        if header is NOT_PROXY:
            if trusted is not None and is_trusted:
                self.router.stats.bad_input += 1
                self._close("proxy_header_required")
                return
        elif is_trusted and header.source is not None:  # type: ignore[union-attr]
            self.source = header.source  # type: ignore[union-attr]
            self._proxied_peer = True
        self._proxy = None
        if self.router.http_factory is not None and self.router.empty:
            self.buffer = rest
            self._to_http()
            return
        if self.router.sni_routes or self.router.http_factory is not None:
            self.state = "peek"
            self._peeker = SNIPeeker()
            if rest:
                self._feed_peek(rest)
        else:
            self.buffer = rest
            self._route("")

    def _feed_peek(self, data: bytes) -> None:
        assert self._peeker is not None
        result = self._peeker.feed(data)
        if result is None:
            if len(self._peeker.buffered) > MAX_PEEK:  # cannot happen: the peeker stops there
                self._close("bad_client_hello")
            return
        self.buffer = self._peeker.buffered
        self._peeker = None
        self._route(result.server_name)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _left_pending(self) -> None:
        host, self._pending_source = self._pending_source, None
        if host is not None:
            self.router._source_routed(host)

    def _route(self, server_name: str) -> None:
        self._cancel_deadline()
        self._left_pending()
        target = self.router.choose(server_name)
        lookup = self.router.http_lookup
        if self.router.http_factory is not None and (
                target is None or (server_name and lookup is not None and lookup(server_name))):
            self._to_http()  # HTTP routes beat TCP routes; unmatched: the HTTP channel
            return
        if target is None:
            self.router.stats.no_route += 1
            self._close("no_route")
            return
        self.target = target
        addr = parse_ip(self.source[0])
        if target.restrictions is not None:
            verdict = target.restrictions.check(addr, overlay=target.private) \
                if addr is not None else "ip_restricted"
            if verdict is not None:
                self.router.stats.denied += 1
                self._close(verdict, log_it=True)
                return
        self.transport.pauseProducing()
        if target.private:
            if self.router.gate is None or self.router.account_id != target.account_id:
                self._close("not_overlay", log_it=True)
                return
            self.state = "gate"
            d = maybeDeferred(self.router.gate, target, self.source[0])
            d.addCallbacks(self._gated, lambda f: self._gated((False, "gate_error", "", ())))
        else:
            self._dial()

    def _gated(self, verdict: tuple[bool, str, str, tuple[str, ...]]) -> None:
        allowed, reason, user_id, groups = verdict
        self.user_id, self.groups = user_id, tuple(groups)
        if self.state != "gate":
            return
        if not allowed:
            self.router.stats.denied += 1
            self._close(reason or "denied", log_it=True)
            return
        self._dial()

    def _regated(self, verdict: tuple[bool, str, str, tuple[str, ...]]) -> None:
        """The gate's answer for a live relay (:meth:`PortRouter.revalidate`)."""
        relay = self.relay
        if verdict[0] or relay is None or relay.ended:
            return
        self.router.stats.denied += 1
        log.info("L4 relay of {source} to service {service} closed: access revoked ({reason})",
                 source=self.source[0], service=self.target.service_id if self.target else "?",
                 reason=verdict[1] or "denied")
        self.abort("access_revoked")

    def _to_http(self) -> None:
        """Hand the connection (and the bytes read so far) to the HTTP channel."""
        self._cancel_deadline()
        self.router.connections.pop(self, None)
        transport = self.transport
        if self._proxied_peer:
            transport = _PeerOverride(transport, self.source)
        inner = self.router.http_factory.sniffer(self.addr)
        if inner is None:
            self.transport.loseConnection()
            return
        self.state = "http"
        self.http = inner
        data, self.buffer = self.buffer, b""
        inner.makeConnection(transport)
        if data:
            inner.dataReceived(data)

    def _dial(self) -> None:
        target = self.target
        assert target is not None
        router = self.router
        if ((router.http_factory is not None and router.at_limit())
                or router.account_at_limit(target.account_id)):
            self._close("relay_limit")
            return
        router._relay_taken(target.account_id)
        self._held = target.account_id
        self.state = "dialing"
        preamble = b""
        if target.proxy_protocol:
            host = self.transport.getHost()
            try:
                preamble = encode_v2(self.source, (str(host.host), int(host.port)))
            except (ValueError, AttributeError):
                preamble = b""
        relay = TCPRelay(self.transport, clock=self.router.clock,
                         idle_timeout=target.idle_timeout, on_end=self._relay_ended,
                         preamble=preamble, pending=self.buffer, service_id=target.service_id)
        self.buffer = b""
        self.relay = relay
        self.router.stats.relays_started += 1
        try:
            endpoint = self.router.dial(target)
            d = endpoint.connect(UpstreamFactory(relay))
        except Exception as exc:
            self._dial_failed(exc)
            return
        d.addErrback(lambda f: self._dial_failed(f.value))
        if self._eof:
            relay.client_eof()

    def _dial_failed(self, exc: Any) -> None:
        self.router.stats.dial_failures += 1
        log.info("L4 dial to {target} for service {service} failed: {err}",
                 target=self.target.address if self.target else "?",
                 service=self.target.service_id if self.target else "?", err=str(exc))
        if self.relay is not None and not self.relay.ended:
            self.relay.close_reason = "dial_failed"
            self.relay.abort("dial_failed")

    def _relay_ended(self, relay: TCPRelay) -> None:
        stats = self.router.stats
        stats.bytes_up += relay.bytes_up
        stats.bytes_down += relay.bytes_down
        if self.router.on_relay_end is not None:
            self.router.on_relay_end(self)

    # ------------------------------------------------------------------ teardown

    def readConnectionLost(self) -> None:
        self._eof = True
        if self.http is not None:
            half = interfaces.IHalfCloseableProtocol(self.http, None)
            if half is not None:
                half.readConnectionLost()
            else:
                self.transport.loseConnection()
            return
        if self.relay is not None:
            self.relay.client_eof()
        elif self.state in ("proxy", "peek"):
            # EOF before the header/peek finished: what was read is all there is
            if self._peeker is not None and self._peeker.buffered:
                self.buffer = self._peeker.buffered
                self._peeker = None
                self._route("")
            else:
                self._close("client_closed")

    def writeConnectionLost(self) -> None:
        if self.http is not None:
            half = interfaces.IHalfCloseableProtocol(self.http, None)
            if half is not None:
                half.writeConnectionLost()
            return
        if self.relay is not None:
            self.relay.write_done("client")

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_deadline()
        self._left_pending()
        self.router.connections.pop(self, None)
        if self.relay is None and self.http is None and self.state != "closed":
            # gone before its relay: a pending gate's answer must dial nothing
            self.state = "closed"
            self.close_reason = self.close_reason or "client_closed"
        if self._held is not None:
            held, self._held = self._held, None
            self.router._relay_released(held)
        if self.http is not None:
            self.http.connectionLost(reason)
            return
        if self.relay is not None:
            self.relay.client_lost(reason)

    def abort(self, reason: str) -> None:
        if self.relay is not None:
            self.relay.abort(reason)
        else:
            self._close(reason)

    def _close(self, reason: str, log_it: bool = False) -> None:
        self._cancel_deadline()
        self.state = "closed"
        self.close_reason = reason
        if log_it and self.router.on_relay_end is not None:
            self.router.on_relay_end(self)
        self.transport.abortConnection()


class _PeerOverride:
    """A transport whose ``getPeer`` is the client a trusted PROXY header
    named (what the HTTP channel logs, restricts and forwards); everything
    else is the real transport."""

    def __init__(self, transport: Any, source: tuple[str, int]) -> None:
        from twisted.internet.address import IPv4Address, IPv6Address

        self._transport = transport
        cls = IPv6Address if ":" in source[0] else IPv4Address
        self._peer = cls("TCP", source[0], source[1])
        directlyProvides(self, providedBy(transport))

    def getPeer(self) -> Any:
        return self._peer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
