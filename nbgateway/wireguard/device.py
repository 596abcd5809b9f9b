"""WireGuardDevice: the sans-IO WireGuard endpoint.

This module holds the roster, the index tables and the wiring to the link and
the sink; the transport data path (the hot path) is
:mod:`nbgateway.wireguard.datapath`, the handshake side
:mod:`nbgateway.wireguard.handshake` and timer scheduling
:mod:`nbgateway.wireguard.scheduler` (mixins of the device).

Owns the static identity, the peer roster, the receiver-index table, cryptokey
routing and the timer deadlines of every peer.  It is fed UDP datagrams through
:meth:`WireGuardDevice.datagramsReceived` (a socket read's worth; the
one-datagram ``datagramReceived`` wraps it) and plaintext IP packets through
:meth:`WireGuardDevice.sendPackets` (one flush of the netstack; ``sendPacket``
wraps it).  Both work per *run* of one session's packets: per-packet work is the
AEAD plus a few field reads, per-run work the session checks, timer events and
the hand-over (``IDatagramBatchLink.sendDatagrams`` /
``IPacketBatchSink.packetsReceived``, with one-by-one fallbacks for plain links
and sinks).  Time comes from an injected ``IReactorTime``; all peer timers share
one re-armed delayed call.

Every dropped datagram or packet increments a named counter in
:attr:`WireGuardDevice.events` (:attr:`WireGuardDevice.counters` adds the
per-packet counts); nothing raised by bad input escapes.
"""

from __future__ import annotations

import itertools
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from nbgateway.interfaces import (
    IDatagramBatchLink,
    IDatagramLink,
    IPacketBatchSink,
    IPacketSender,
    IPacketSink,
)
from nbgateway.netstack.prefix import Prefix, as_prefix
from nbgateway.wireguard import constants as C
from nbgateway.wireguard import noise
from nbgateway.wireguard.allowedips import AllowedIPs
from nbgateway.wireguard.cookie import CookieChecker
from nbgateway.wireguard.datapath import TransportPath
from nbgateway.wireguard.handshake import HandshakeMixin
from nbgateway.wireguard.indices import IndexRegistry  # re-exported for the mux
from nbgateway.wireguard.peer import Peer
from nbgateway.wireguard.scheduler import TimerScheduler
from nbgateway.wireguard.timers import TimerConfig

#: one OS-randomness source for every instance: SystemRandom draws from
#: os.urandom and keeps no state, but each instance allocates an unused
#: Mersenne Twister state (~2.5 KiB per idle account)
_SYSTEM_RANDOM = random.SystemRandom()

log = Logger()

_U32 = struct.Struct("<I")

DEFAULT_UNDER_LOAD_THRESHOLD = 256  # handshake messages per second before cookies


def _parse_allowed(allowed_ips: Iterable) -> tuple[Prefix, ...]:
    # compact ints (a converted map's prefixes are taken as they are, and its
    # tuple too: the peer then shares it with the roster)
    if type(allowed_ips) is tuple and all(type(a) is Prefix for a in allowed_ips):
        return allowed_ips
    return tuple(as_prefix(a) for a in allowed_ips)


@implementer(IPacketSender)
class WireGuardDevice(TransportPath, HandshakeMixin, TimerScheduler):
    """A userspace WireGuard interface (one static key, many peers)."""

    # one per account: 37 attributes are past the 30 for which CPython 3.11
    # shares a class's dict keys (a private ~1.6 KiB dict per device).  The
    # mixins have empty slots; ``__dict__`` stays for ad-hoc attributes (tests
    # wrap methods) and is only allocated when one is set.
    __slots__ = (
        "__dict__",
        "_call",
        "_call_at",
        "_checker",
        "_closed",
        "_data_rx",
        "_data_tx",
        "_heap",
        "_hs_window_count",
        "_hs_window_start",
        "_indices",
        "_keepalive_rx",
        "_keepalive_tx",
        "_last_timestamp",
        "_link",
        "_link_run",
        "_rekey_after_messages",
        "_rng",
        "_route_cache",
        "_seconds",
        "_seq",
        "_sink",
        "_sink_run",
        "_source_buckets",
        "_under_load_until",
        "_urandom",
        "_walltime",
        "allowed_ips",
        "clock",
        "events",
        "identity",
        "identity_mac1_key",
        "index_registry",
        "load_probe",
        "mtu",
        "peers",
        "public_key",
        "timers",
        "under_load_threshold",
    )

    def __init__(
        self,
        private_key: bytes,
        clock: IReactorTime,
        *,
        link: IDatagramLink | None = None,
        sink: IPacketSink | None = None,
        timers: TimerConfig | None = None,
        mtu: int = 1420,
        under_load_threshold: int = DEFAULT_UNDER_LOAD_THRESHOLD,
        rng: random.Random | None = None,
        index_registry: IndexRegistry | None = None,
        urandom: Callable[[int], bytes] = os.urandom,
        walltime: Callable[[], float] = time.time,
    ) -> None:
        if len(private_key) != 32:
            raise ValueError("private key must be 32 bytes")
        self.identity = noise.StaticIdentity(private_key)
        self.public_key = self.identity.public
        self.identity_mac1_key = self.identity.mac1_key
        self.clock = clock
        self._seconds = clock.seconds
        self.link = link
        self.sink = sink
        self.timers = timers or TimerConfig()
        self._rekey_after_messages = self.timers.rekey_after_messages
        self.mtu = mtu
        self.under_load_threshold = under_load_threshold
        self._rng = rng or _SYSTEM_RANDOM
        self._urandom = urandom
        self._walltime = walltime
        self._checker = CookieChecker(self.public_key, urandom)
        self.peers: dict[bytes, Peer] = {}
        #: the reverse index is each peer's ``allowed_ips`` (no dict per peer)
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs(reverse_attr="allowed_ips")
        # destination -> peer cache in front of the LPM table; cleared on any change
        self._route_cache: dict[bytes, Peer] = {}
        # receiver index -> (peer, Keypair or the InitiatorState of a handshake)
        self._indices: dict[int, tuple[Peer, object]] = {}
        self.index_registry = index_registry
        #: named events (drops, handshakes, errors); see :attr:`counters`
        self.events: Counter[str] = Counter()
        # per-packet counts are plain ints (a Counter update costs ~5x more)
        self._data_rx = self._data_tx = self._keepalive_rx = self._keepalive_tx = 0
        self._last_timestamp = bytes(12)
        # handshake-rate accounting for the under-load decision
        self._hs_window_start = float("-inf")
        self._hs_window_count = 0
        self._under_load_until = float("-inf")
        # under load: source IP -> (tokens, stamp) of initiations past MAC2 (lazy)
        self._source_buckets: dict[str, tuple[float, float]] | None = None
        # one re-armed deadline for all peer timers
        self._heap: list[tuple[float, int, Peer, int]] = []
        self._seq = itertools.count()
        self._call: IDelayedCall | None = None
        self._call_at: float | None = None
        self._closed = False
        #: see HandshakeMixin.load_probe (set by a DeviceMux)
        self.load_probe: Callable[[float], bool] | None = None

    @property
    def counters(self) -> Counter[str]:
        """A snapshot of every counter: the named events plus the per-packet
        counts ``data_rx``, ``data_tx``, ``keepalive_rx`` and ``keepalive_tx``.
        Increment :attr:`events` to count something; this is a copy."""
        snap = Counter(self.events)
        for name, value in (
            ("data_rx", self._data_rx),
            ("data_tx", self._data_tx),
            ("keepalive_rx", self._keepalive_rx),
            ("keepalive_tx", self._keepalive_tx),
        ):
            if value:
                snap[name] = value
        return snap

    # ------------------------------------------------------------------ roster

    def add_peer(
        self,
        public_key: bytes,
        *,
        allowed_ips: Iterable = (),
        endpoint: tuple[str, int] | None = None,
        preshared_key: bytes | None = None,
        persistent_keepalive: int | None = None,
    ) -> Peer:
        if public_key in self.peers:
            return self.update_peer(
                public_key,
                allowed_ips=allowed_ips,
                endpoint=endpoint,
                preshared_key=preshared_key,
                persistent_keepalive=persistent_keepalive,
            )
        if public_key == self.public_key:
            raise ValueError("a peer cannot have the device's own public key")
        nets = _parse_allowed(allowed_ips)
        peer = Peer(
            self.identity,
            public_key,
            preshared_key=preshared_key,
            endpoint=endpoint,
            persistent_keepalive=persistent_keepalive,
        )
        self.peers[public_key] = peer
        self._set_allowed(peer, nets)
        if peer.persistent_keepalive:
            self._arm(peer, "persistent_keepalive", self._now() + peer.persistent_keepalive)
        return peer

    def update_peer(self, public_key: bytes, **changes) -> Peer:
        """Change a peer's settings in place; sessions survive."""
        peer = self.peers[public_key]
        if changes.get("allowed_ips") is not None:
            self._set_allowed(peer, _parse_allowed(changes["allowed_ips"]))
        if changes.get("endpoint") is not None:
            peer.endpoint = changes["endpoint"]
        if "preshared_key" in changes and changes["preshared_key"] is not None:
            peer.preshared_key = changes["preshared_key"]
        if "persistent_keepalive" in changes and changes["persistent_keepalive"] is not None:
            peer.persistent_keepalive = changes["persistent_keepalive"] or None
            if peer._timers is not None:
                peer._timers.persistent_keepalive = None
            if peer.persistent_keepalive:
                self._arm(peer, "persistent_keepalive", self._now() + peer.persistent_keepalive)
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self._route_cache.clear()
        self.allowed_ips.remove_value(peer)
        self._drop_handshake(peer)
        for kp in peer.keypairs():
            self._release(kp.local_index)
        peer.previous = peer.current = peer.next = None
        if peer._staged is not None:
            peer._staged.clear()
        if peer._timers is not None:
            peer._timers.clear()
        peer.removed = True

    def _set_allowed(self, peer: Peer, nets: tuple[Prefix, ...]) -> None:
        """Give ``peer`` exactly ``nets``; costs the peer's own networks, not the
        roster's size (an unchanged set is a no-op that keeps the route cache)."""
        if peer.allowed_ips == nets and all(self.allowed_ips.owner(n) is peer
                                            for n in nets):
            return
        self._route_cache.clear()
        self.allowed_ips.remove_value(peer)
        # an allowed IP belongs to one peer only: the table moves it, and keeps
        # ``allowed_ips`` of this peer and of any peer it took one from
        for net in nets:
            self.allowed_ips.insert(net, peer)
        if peer.allowed_ips == nets:
            peer.allowed_ips = nets  # the caller's equal tuple: one object, not two

    def close(self) -> None:
        """Cancel the device deadline and release its indices; the device ignores
        input afterwards."""
        self._closed = True
        for index in list(self._indices):
            self._release(index)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    # ------------------------------------------------------------------ helpers

    def _now(self) -> float:
        return self.clock.seconds()

    def _new_index(self, peer: Peer, obj: object) -> int:
        registry = self.index_registry
        while True:
            index = _U32.unpack(self._urandom(4))[0]
            if index in self._indices:
                continue
            if registry is not None and not registry.claim(index, self):
                continue
            self._indices[index] = (peer, obj)
            return index

    def _release(self, index: int) -> None:
        if self._indices.pop(index, None) is not None and self.index_registry is not None:
            self.index_registry.release(index)

    def _send(self, peer: Peer, data: bytes) -> bool:
        if peer.endpoint is None:
            self.events["drop_no_endpoint"] += 1
            return False
        link = self.link
        if link is None:
            self.events["drop_no_link"] += 1
            return False
        link.sendDatagram(data, peer.endpoint)
        return True


    # ------------------------------------------------------------------ wiring

    @property
    def link(self) -> IDatagramLink | None:
        """Where datagrams go; an :class:`IDatagramBatchLink` gets each run of
        datagrams to one peer in one call."""
        return self._link

    @link.setter
    def link(self, link: IDatagramLink | None) -> None:
        self._link = link
        if link is None:
            self._link_run = None
        elif IDatagramBatchLink.providedBy(link):
            self._link_run = link.sendDatagrams
        else:
            def one_by_one(datagrams: list[bytes], addr: tuple[str, int]) -> None:
                for datagram in datagrams:
                    link.sendDatagram(datagram, addr)

            self._link_run = one_by_one

    @property
    def sink(self) -> IPacketSink | None:
        """Where decrypted packets go; an :class:`IPacketBatchSink` gets each run
        of one peer's packets in one call, a plain sink one call per packet."""
        return self._sink

    @sink.setter
    def sink(self, sink: IPacketSink | None) -> None:
        self._sink = sink
        if sink is None:
            self._sink_run = None
        elif IPacketBatchSink.providedBy(sink):
            self._sink_run = sink.packetsReceived
        else:
            def one_by_one(packets: list[bytes], peer_key: bytes) -> None:
                for packet in packets:
                    sink.packetReceived(packet, peer_key)

            self._sink_run = one_by_one

    def _deliver(self, packets: list[bytes], peer: Peer) -> None:
        sink_run = self._sink_run
        if sink_run is None:
            self.events["drop_no_sink"] += len(packets)
            return
        try:
            sink_run(packets, peer.public_key)
        except Exception:
            self.events["drop_internal_error"] += 1
            log.failure("the packet sink failed")

    def _receive_control(self, data: bytes, addr: tuple[str, int]) -> None:
        """Handshake initiation, response and cookie reply; anything else is
        malformed."""
        if self._closed:
            return
        n = len(data)
        mtype = _U32.unpack_from(data)[0] if n >= 4 else -1
        if mtype == C.MESSAGE_INITIATION and n == C.MESSAGE_INITIATION_SIZE:
            self._receive_initiation(bytes(data), addr)
        elif mtype == C.MESSAGE_RESPONSE and n == C.MESSAGE_RESPONSE_SIZE:
            self._receive_response(bytes(data), addr)
        elif mtype == C.MESSAGE_COOKIE_REPLY and n == C.MESSAGE_COOKIE_REPLY_SIZE:
            self._receive_cookie_reply(bytes(data))
        else:
            self.events["drop_malformed"] += 1
