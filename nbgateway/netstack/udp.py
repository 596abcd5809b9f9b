"""UDP sockets on the stack's tunnel addresses and their Twisted adapter.

:class:`UDPLayer` is the per-stack socket table, keyed by (local address,
port); a wildcard socket (bound to ``""``) receives on every stack address
of both families.  :func:`listen_udp` is the ``reactor.listenUDP`` of the
tunnel: it hands a ``DatagramProtocol`` a :class:`UDPPort` transport
(``IListeningPort`` + ``IUDPTransport``: ``write(data, (host, port))``,
``connect``, ``getHost``, ``stopListening``).

Datagrams are delivered synchronously from ``Stack.packetReceived`` to
``datagramReceived`` (no receive queue to bound); exceptions raised by the
protocol are logged and counted (``udp_protocol_error``), never propagated.
A datagram for a port nobody listens on is answered with a rate-limited ICMP
port unreachable.  Datagrams larger than the MTU are fragmented by the stack;
writes larger than IP can carry (or than the MTU when the stack was built
with ``fragment_output=False``) raise ``MessageLengthError``.  Ports bound with port 0 come from the
ephemeral range 49152-65535 and are exempt from the packet filter (they are
client sockets; see ``filter.py``).
"""

from __future__ import annotations

import ipaddress
import random
from typing import Any

from twisted.internet import address, defer, error
from twisted.internet.interfaces import IListeningPort, IUDPTransport
from twisted.logger import Logger
from zope.interface import implementer

from nbgateway.netstack import wire
from nbgateway.netstack.iplayer import IIPLayer
from nbgateway.netstack.wire import WireError

EPHEMERAL_LOW = 49152
EPHEMERAL_HIGH = 65535

log = Logger()


class UDPLayer:
    """The socket table of one stack."""

    def __init__(self, stack: IIPLayer) -> None:
        self.stack = stack
        self.counters = stack.counters
        self.sockets: dict[tuple[bytes, int], UDPPort] = {}
        self._hosts: dict[str, bytes] = {}

    def input(
        self, src: bytes, dst: bytes, seg: memoryview, quote: memoryview | bytes,
        peer_key: bytes, now: float, verify: bool = True,
    ) -> None:
        """One inbound datagram; ``verify`` False skips the checksum check (the
        stack's link authenticated the packet)."""
        try:
            sport, dport, length = wire.udp_parse(seg, src, dst, verify)
        except WireError as e:
            self.counters[e.reason] += 1
            return
        sockets = self.sockets
        sock = sockets.get((dst, dport)) or sockets.get((b"", dport))
        f = self.stack.filter
        if f.active and (sock is None or not sock.ephemeral) and not f.allows(
            src, wire.PROTO_UDP, dport, peer_key
        ):
            self.counters["drop_filtered"] += 1
            return
        if sock is None:
            self.counters["udp_no_port"] += 1
            self.stack.port_unreachable(src, dst, quote, now)
            return
        if sock.remote is not None and sock.remote != (src, sport):
            self.counters["drop_udp_not_connected"] += 1
            return
        self.counters["udp_rx"] += 1
        sock._deliver(src, sport, seg[wire.UDP_HEADER_LEN : length])

    def icmp_error(self, local: bytes, remote: bytes, sport: int, dport: int, kind: str) -> None:
        """An ICMP error about a datagram we sent from ``local:sport`` to
        ``remote:dport``: connected sockets get ``connectionRefused()``."""
        sock = self.sockets.get((local, sport)) or self.sockets.get((b"", sport))
        if sock is None or sock.remote != (remote, dport):
            return
        if kind in ("port_unreachable", "host_unreachable", "net_unreachable",
                    "admin_prohibited", "protocol_unreachable"):
            sock._refused()

    def host_raw(self, host: str) -> bytes:
        raw = self._hosts.get(host)
        if raw is None:
            try:
                raw = ipaddress.ip_address(host).packed
            except ValueError:
                raise error.InvalidAddressError(host, "not an IP address") from None
            if len(self._hosts) >= 1024:
                self._hosts.clear()
            self._hosts[host] = raw
        return raw

    def allocate_port(self, local: bytes) -> int:
        span = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1
        start = random.randrange(span)
        for i in range(span):
            port = EPHEMERAL_LOW + (start + i) % span
            if not self._in_use(local, port):
                return port
        raise error.CannotListenError("", 0, OSError("no free ephemeral UDP port"))

    def _in_use(self, local: bytes, port: int) -> bool:
        if local:
            return (local, port) in self.sockets or (b"", port) in self.sockets
        return any(p == port for (_l, p) in self.sockets)


@implementer(IListeningPort, IUDPTransport)
class UDPPort:
    """A UDP socket on a stack, as the transport of a ``DatagramProtocol``."""

    def __init__(
        self, layer: UDPLayer, local: bytes, port: int, protocol: Any,
        *, ephemeral: bool = False, interface: str = "",
    ) -> None:
        self.layer = layer
        self.stack = layer.stack
        self.local = local
        self.port = port
        self.protocol = protocol
        self.ephemeral = ephemeral
        self.interface = interface
        self.remote: tuple[bytes, int] | None = None
        self.listening = False
        self._broadcast = False

    def __repr__(self) -> str:
        return f"<UDPPort {self.interface or '*'}:{self.port} on netstack>"

    # IListeningPort
    def startListening(self) -> None:
        if self.listening:
            return
        if self.layer._in_use(self.local, self.port):
            raise error.CannotListenError(self.interface, self.port, OSError("address in use"))
        self.layer.sockets[(self.local, self.port)] = self
        self.listening = True
        self.protocol.makeConnection(self)

    def stopListening(self) -> defer.Deferred:
        if self.listening:
            self.listening = False
            self.layer.sockets.pop((self.local, self.port), None)
            self.protocol.doStop()
        return defer.succeed(None)

    loseConnection = stopListening

    def getHost(self) -> address.IPv4Address | address.IPv6Address:
        if self.local:
            text = self.stack.address_text(self.local)
            cls = address.IPv4Address if len(self.local) == 4 else address.IPv6Address
            return cls("UDP", text, self.port)
        if self.stack.source_for(b"\0\0\0\0") is None:
            return address.IPv6Address("UDP", "::", self.port)
        return address.IPv4Address("UDP", "0.0.0.0", self.port)

    # IUDPTransport
    def write(self, datagram: bytes, addr: tuple[str, int] | None = None) -> None:
        if not self.listening:
            raise error.NotListeningError("UDP port is not listening")
        if self.remote is not None:
            if addr is not None:
                raise ValueError("connected UDP socket: write() takes no address")
            d_raw, dport = self.remote
        else:
            if addr is None:
                raise ValueError("write() needs an address on an unconnected socket")
            host, dport = addr
            d_raw = self.layer.host_raw(host)
        if not 0 < dport <= 0xFFFF:
            raise error.InvalidAddressError(str(addr), "bad port")
        stack = self.stack
        if self.local:
            if len(self.local) != len(d_raw):
                raise error.InvalidAddressError(str(addr), "address family mismatch")
            s_raw = self.local
        else:
            s_raw = stack.source_for(d_raw)
            if s_raw is None:
                raise error.InvalidAddressError(str(addr), "no local address of that family")
        n = len(datagram)
        if len(s_raw) == 4:  # the largest datagram IP can carry, fragmented or not
            limit = 0xFFFF - wire.IPV4_HEADER_LEN - wire.UDP_HEADER_LEN
        else:
            limit = 0xFFFF - wire.UDP_HEADER_LEN
        if not stack.fragment_output:
            ip_hl = wire.IPV4_HEADER_LEN if len(s_raw) == 4 else wire.IPV6_HEADER_LEN
            limit = stack.mtu - ip_hl - wire.UDP_HEADER_LEN
        if n > limit:
            raise error.MessageLengthError(
                f"datagram of {n} bytes exceeds the limit of {limit} (tunnel MTU {stack.mtu})"
            )
        seg = bytearray(wire.UDP_HEADER_LEN + n)
        length = wire.UDP_HEADER_LEN + n
        seg[0:8] = bytes((self.port >> 8, self.port & 0xFF, dport >> 8, dport & 0xFF,
                          length >> 8, length & 0xFF, 0, 0))
        seg[8:] = datagram
        if stack.send_transport(s_raw, d_raw, wire.PROTO_UDP, seg):
            self.layer.counters["udp_tx"] += 1

    def connect(self, host: str, port: int) -> None:
        if self.remote is not None:
            raise RuntimeError("already connected, reconnecting is not supported")
        raw = self.layer.host_raw(host)
        if self.local and len(self.local) != len(raw):
            raise error.InvalidAddressError(host, "address family mismatch")
        self.remote = (raw, port)

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self._broadcast = bool(enabled)  # no broadcast on a layer-3 tunnel

    def getBroadcastAllowed(self) -> bool:
        return self._broadcast

    # from the layer
    def _deliver(self, src: bytes, sport: int, payload: memoryview) -> None:
        try:
            self.protocol.datagramReceived(
                bytes(payload), (self.stack.address_text(src), sport)
            )
        except Exception:
            self.layer.counters["udp_protocol_error"] += 1
            log.failure("UDP protocol {protocol!r} raised in datagramReceived",
                        protocol=self.protocol)

    def _refused(self) -> None:
        try:
            self.protocol.connectionRefused()
        except Exception:
            self.layer.counters["udp_protocol_error"] += 1
            log.failure("UDP protocol raised in connectionRefused")


def listen_udp(
    stack: IIPLayer, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192,
) -> UDPPort:
    """Bind ``protocol`` (a ``DatagramProtocol``) to ``interface:port`` on the
    stack, like ``reactor.listenUDP``.  ``interface`` is one of the stack's
    addresses, or ``""``/``0.0.0.0``/``::`` for all of them; port 0 picks an
    ephemeral port.  Raises ``CannotListenError`` if taken or not local."""
    layer = stack.udp
    if interface in ("", "0.0.0.0", "::"):
        local = b""
    else:
        try:
            local = ipaddress.ip_address(interface).packed
        except ValueError:
            raise error.CannotListenError(interface, port, ValueError("not an IP")) from None
        if stack.local_address(local) is None:
            raise error.CannotListenError(
                interface, port, OSError("address not on this stack")
            )
    if not 0 <= port <= 0xFFFF:
        raise error.CannotListenError(interface, port, ValueError("bad port"))
    ephemeral = port == 0
    if ephemeral:
        port = layer.allocate_port(local)
    p = UDPPort(layer, local, port, protocol, ephemeral=ephemeral, interface=interface)
    p.startListening()
    return p
