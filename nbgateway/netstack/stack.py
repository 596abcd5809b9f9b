"""The per-account IP stack: an ``IPacketSink`` for the WireGuard device.

Inbound (:meth:`Stack.packetReceived`, validation, reassembly, demultiplexing
to TCP/UDP/ICMP) lives in ``stack_input.py``, outbound (the cork,
:meth:`Stack.send_transport`/:meth:`Stack.send_ip`, fragmentation) in
``stack_output.py``: method-only mixins of :class:`Stack`, which holds the
state (its slots), the addresses, the timer and shutdown.

Timers: one ``IDelayedCall`` per stack, re-armed by :meth:`Stack.wakeup` at
the earliest of ``tcp.next_deadline()``, the fragment expiry and ping
timeouts.  The stack calls ``wakeup()`` itself after every
``tcp.segment_received`` (once per inbound batch of ``packetsReceived``) and
after every ``tcp.on_deadline``; the TCP layer
only needs to call it for changes made outside those calls (user writes,
connect, close) and only when its deadline may have moved *earlier*: a later
deadline needs no call (the timer fires early and re-arms).  ``_timer`` is
None whenever no call is pending.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from nbgateway.interfaces import IPacketBatchSink, IPacketSender
from nbgateway.netstack import wire
from nbgateway.netstack.coalesce import TCPCoalescer
from nbgateway.netstack.filter import PacketFilter
from nbgateway.netstack.icmp import ICMPLayer
from nbgateway.netstack.ip import AddressCache, Reassembler
from nbgateway.netstack.iplayer import IIPLayer
from nbgateway.netstack.stack_input import StackInput
from nbgateway.netstack.stack_output import StackOutput
from nbgateway.netstack.udp import UDPLayer

log = Logger()

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressLike = str | IPAddress

DEFAULT_MTU = 1280


#: the TCP layer's default connection bound (tcp.DEFAULT_MAX_CONNECTIONS; not
#: imported: the TCP layer is loaded only when a stack is built)
DEFAULT_MAX_TCP_CONNECTIONS = 16384


def _default_tcp_factory(stack: Stack, max_connections: int = DEFAULT_MAX_TCP_CONNECTIONS) -> Any:
    from nbgateway.netstack.tcp import TCPLayer  # written by the TCP layer's owner

    return TCPLayer(stack, max_connections=max_connections)


@implementer(IPacketBatchSink, IIPLayer)
class Stack(StackInput, StackOutput):
    """One user-space IP stack bound to a set of tunnel addresses.

    Public attributes: ``sender``, ``clock``, ``mtu``, ``ttl``,
    ``addresses`` (tuple of ipaddress objects), ``counters``
    (``collections.Counter``), ``filter`` (:class:`PacketFilter`),
    ``fragments`` (:class:`Reassembler`), ``tcp``, ``udp``
    (:class:`UDPLayer`), ``icmp`` (:class:`ICMPLayer`).  The layers use only
    the :class:`~nbgateway.netstack.iplayer.IIPLayer` interface it provides.

    ``verify_checksums=False`` is for a stack fed by WireGuard: every packet
    it receives was authenticated by the AEAD, so the TCP/UDP checksums of
    inbound packets are not verified (Linux marks decrypted WireGuard packets
    CHECKSUM_UNNECESSARY; gVisor under wireguard-go skips them likewise).
    Output checksums are always computed.

    ``max_tcp_connections`` bounds the TCP connections (not in TIME-WAIT) the
    default TCP layer holds: a stack is one account's, and its peers must not
    grow the gateway's shared heap without limit (ignored with a
    ``tcp_factory``, which builds its own layer).
    """

    # 31 attributes: more than CPython 3.11 shares dict keys for (30), so
    # without slots every account's stack carried its own ~1.6 KiB dict
    __slots__ = (
        "_addr_sums", "_batch_wakeup", "_cache", "_closed", "_coalescing", "_cork_depth",
        "_corked", "_counters", "_dst_sender", "_first", "_ident", "_ident6", "_local",
        "_peer_keys", "_rx4",
        "_tcp_fast", "_timer", "_timer_at", "addresses", "clock", "coalesce", "coalescer",
        "filter",
        "fragment_output", "fragments", "icmp", "icmp_host_unreachable", "mtu", "sender", "tcp",
        "ttl", "udp", "verify_checksums",
    )

    #: tcp_fast.emit may build this stack's IPv4/IPv6 + TCP packets itself
    #: (it uses ``ttl``, ``mtu``, ``_ident``, the cork, ``sender`` and
    #: ``counters`` exactly as :meth:`send_transport`/:meth:`send_ip` do)
    fused_tcp_output = True

    def __init__(
        self,
        sender: IPacketSender,
        clock: IReactorTime,
        addresses: Iterable[AddressLike],
        *,
        mtu: int = DEFAULT_MTU,
        tcp_factory: Callable[[Stack], Any] | None = None,
        ttl: int = wire.DEFAULT_TTL,
        icmp_host_unreachable: bool = True,
        fragment_output: bool = True,
        icmp_error_rate: float = 100.0,
        icmp_error_burst: int = 50,
        reassembly_timeout: float = 30.0,
        max_reassembly_datagrams: int = 64,
        max_reassembly_bytes: int = 256 * 1024,
        verify_checksums: bool = True,
        coalesce: bool = True,
        max_tcp_connections: int = DEFAULT_MAX_TCP_CONNECTIONS,
    ) -> None:
        addrs = tuple(ipaddress.ip_address(a) for a in addresses)
        if not addrs:
            raise ValueError("a stack needs at least one address")
        if not 576 <= mtu <= 0xFFFF:
            raise ValueError(f"mtu {mtu} out of range")
        if mtu < 1280 and any(a.version == 6 for a in addrs):
            raise ValueError("IPv6 needs an MTU of at least 1280 (RFC 8200 5)")
        self.sender = sender
        #: the sender if its sendPacket takes the IPv4 destination the caller
        #: wrote (``packet_sender_takes_dst``: the WireGuard device, which then
        #: does not read it back from the packet); Connection.send passes it
        #: only while ``sender`` is still this object
        self._dst_sender = sender if getattr(sender, "packet_sender_takes_dst", False) else None
        self.clock = clock
        self.mtu = mtu
        self.ttl = ttl
        self.addresses = addrs
        self.icmp_host_unreachable = icmp_host_unreachable
        self.verify_checksums = verify_checksums
        self.coalescer = TCPCoalescer(self._tcp_one, self._tcp_run)
        self.coalesce = coalesce  # False: every segment reaches TCP on its own (A/B benches)
        self._coalescing = False  # inside packetsReceived: TCP segments go to the coalescer
        self._batch_wakeup = False  # inside packetsReceived: one timer re-arm at its end
        self._local: dict[bytes, IPAddress] = {a.packed: a for a in addrs}
        self._first: dict[int, bytes | None] = {
            v: next((a.packed for a in addrs if a.version == v), None) for v in (4, 6)
        }
        self._counters: Counter[str] = Counter()
        self._rx4 = 0  # IPv4 packets accepted, not yet in _counters["rx_packets"]
        self._tcp_fast: Any = None
        self.filter = PacketFilter()
        self.fragments = Reassembler(
            self._counters, timeout=reassembly_timeout,
            max_datagrams=max_reassembly_datagrams, max_bytes=max_reassembly_bytes,
        )
        self._cache = AddressCache()
        self._peer_keys: dict[bytes, bytes] = {}
        self._addr_sums: dict[bytes, int] = {}  # raw address -> its checksum sum
        self.icmp = ICMPLayer(self, error_rate=icmp_error_rate, error_burst=icmp_error_burst)
        self.udp = UDPLayer(self)
        self._ident = random.getrandbits(16)
        self._ident6 = random.getrandbits(32)
        self.fragment_output = fragment_output
        self._timer: Any = None
        self._timer_at: float | None = None
        self._closed = False
        # output cork: while > 0, packets collect in _corked and leave in one
        # sender.sendPackets call when the outermost uncork() runs
        self._cork_depth = 0
        self._corked: list[bytes] = []
        self.tcp: Any = (tcp_factory(self) if tcp_factory is not None
                         else _default_tcp_factory(self, max_tcp_connections))
        # the TCP layer's fused input for the predicted segment (tcp_fast.py), if it has one
        self._tcp_fast = getattr(self.tcp, "fast", None)

    def __repr__(self) -> str:
        return f"<Stack {' '.join(map(str, self.addresses))} mtu={self.mtu}>"

    @property
    def counters(self) -> Counter[str]:
        """The stack's counters (drop reasons, packets, TCP events): the live
        Counter every layer increments.  The hot paths count a few things in
        plain ints instead (a Counter increment costs several times an int
        attribute's): accepted IPv4 packets (``rx_packets``) and the fused TCP
        path's segments (``tcp_segments_in``, ``tcp_segments_out``,
        ``tx_packets``: ``FastPath.hits``/``emits``); every read folds them in
        first, so what a reader sees is complete."""
        c = self._counters
        if self._rx4:
            c["rx_packets"] += self._rx4
            self._rx4 = 0
        fast = self._tcp_fast
        if fast is not None:
            fast.fold(c)
        return c

    def source_for(self, dst: bytes) -> bytes | None:
        """The local address used to reach ``dst`` (first of its family)."""
        return self._first[4 if len(dst) == 4 else 6]

    def local_address(self, raw: bytes) -> IPAddress | None:
        """The ipaddress object of one of the stack's own addresses, or None."""
        return self._local.get(raw)

    def address_object(self, raw: bytes) -> IPAddress:
        """The (cached) ipaddress object of a raw address."""
        return self._cache.obj(raw)

    def address_text(self, raw: bytes) -> str:
        """The (cached) text form of a raw address."""
        return self._cache.text(raw)

    def source_address(self, dst: IPAddress) -> IPAddress | None:
        """The stack address used as source towards ``dst`` (None if the stack
        has no address of that family)."""
        raw = self._first[dst.version]
        return None if raw is None else self._local[raw]

    def is_local(self, addr: IPAddress) -> bool:
        return addr.packed in self._local

    def ping(self, dst: AddressLike, data: bytes = b"", timeout: float = 5.0) -> Any:
        """ICMP echo through the tunnel; Deferred firing with the RTT."""
        return self.icmp.ping(dst, data, timeout)

    # -------------------------------------------------------------- timer

    def next_deadline(self) -> float | None:
        """Earliest of the TCP, reassembly and ping deadlines (None: none)."""
        best = self.tcp.next_deadline()
        if self.fragments.table:
            d = self.fragments.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        if self.icmp.pending_pings:
            d = self.icmp.next_deadline()
            if d is not None and (best is None or d < best):
                best = d
        return best

    def wakeup(self) -> None:
        """Re-arm the stack's single timer at the earliest deadline.  Cheap
        when the timer is already armed at or before that time (it then fires
        early and re-arms), so it is called after every TCP segment."""
        if self._closed:
            return
        # next_deadline, inlined: TCP's alone unless reassembly or pings wait
        at = self.tcp.next_deadline()
        if self.fragments.table or self.icmp.pending_pings:
            at = self.next_deadline()
        timer = self._timer
        if at is None:
            if timer is not None:
                timer.cancel()
                self._timer = self._timer_at = None
            return
        if timer is not None:
            if self._timer_at <= at:  # type: ignore[operator]
                return
            timer.reset(max(0.0, at - self.clock.seconds()))
        else:
            self._timer = self.clock.callLater(max(0.0, at - self.clock.seconds()), self._fire)
        self._timer_at = at

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        now = self.clock.seconds()
        try:
            self.fragments.expire(now)
            self.icmp.expire(now)
            if self.tcp is not None:
                self.tcp.on_deadline(now)
        except Exception:
            self._counters["error_internal"] += 1
            log.failure("netstack: unexpected error in deadline processing")
        self.wakeup()

    def close(self) -> None:
        """Shut the stack down (its account is going away): cancel the timer,
        stop every UDP port (protocols see ``stopProtocol``), fail pending
        pings, call ``tcp.close()`` if the TCP layer has one, and from then on
        drop inbound packets (``drop_closed``) and refuse to send."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
        for port in list(self.udp.sockets.values()):
            port.stopListening()
        self.icmp.cancel_pings()
        tcp_close = getattr(self.tcp, "close", None)
        if callable(tcp_close):
            tcp_close()

    @property
    def closed(self) -> bool:
        return self._closed
