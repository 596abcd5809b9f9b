"""WireGuardDevice: the sans-IO WireGuard endpoint.

This module holds the roster, the datagram demultiplexer and the transport
data path (the hot path); the handshake side is
:mod:`nbgateway.wireguard.handshake` and timer scheduling
:mod:`nbgateway.wireguard.scheduler` (mixins of the device).

Owns the static identity, the peer roster, the receiver-index table, cryptokey
routing and the timer deadlines of every peer.  It is fed UDP datagrams through
:meth:`WireGuardDevice.datagramReceived` and plaintext IP packets through
:meth:`WireGuardDevice.sendPacket`; it emits datagrams to an
:class:`~nbgateway.interfaces.IDatagramLink` and decrypted, source-checked IP
packets to an :class:`~nbgateway.interfaces.IPacketSink`.  Time comes from an
injected ``IReactorTime``; all peer timers share one re-armed delayed call.

Every dropped datagram or packet increments a named counter in
:attr:`WireGuardDevice.counters`; nothing raised by bad input escapes.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable

from cryptography.exceptions import InvalidTag
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
from nbgateway.wireguard import constants as C
from nbgateway.wireguard import noise
from nbgateway.wireguard.allowedips import AllowedIPs
from nbgateway.wireguard.cookie import CookieChecker
from nbgateway.wireguard.handshake import HandshakeMixin
from nbgateway.wireguard.indices import IndexRegistry  # re-exported for the mux
from nbgateway.wireguard.messages import (
    TRANSPORT_HEADER,
)
from nbgateway.wireguard.peer import Keypair, Peer
from nbgateway.wireguard.scheduler import TimerScheduler
from nbgateway.wireguard.timers import TimerConfig

log = Logger()

_U32 = struct.Struct("<I")
_NONCE = struct.Struct("<4xQ").pack
_TRANSPORT_RX = struct.Struct("<IIQ").unpack_from
_TRANSPORT_HDR = TRANSPORT_HEADER.pack
_TRANSPORT = C.MESSAGE_TRANSPORT
_TRANSPORT_MIN = C.MESSAGE_TRANSPORT_MIN_SIZE
_ZERO_PAD = bytes(C.PADDING_MULTIPLE)

_ROUTE_CACHE_MAX = 4096
# inner header fields for the inbound source check: (total length, source)
_IP4_LENGTH_SOURCE = struct.Struct("!2xH8x4s").unpack_from
_IP6_LENGTH_SOURCE = struct.Struct("!4xH2x16s").unpack_from  # (payload length, source)
_REJECT_MSGS = C.REJECT_AFTER_MESSAGES
DEFAULT_UNDER_LOAD_THRESHOLD = 256  # handshake messages per second before cookies


def _parse_allowed(allowed_ips: Iterable) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(a, strict=False) for a in allowed_ips]


@implementer(IPacketSender)
class WireGuardDevice(HandshakeMixin, TimerScheduler):
    """A userspace WireGuard interface (one static key, many peers)."""

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
        self._keepalive_timeout = self.timers.keepalive_timeout
        self.mtu = mtu
        self.under_load_threshold = under_load_threshold
        self._rng = rng or random.SystemRandom()
        self._urandom = urandom
        self._walltime = walltime
        self._checker = CookieChecker(self.public_key, urandom)
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        # destination -> peer cache in front of the LPM table; cleared on any change
        self._route_cache: dict[bytes, Peer] = {}
        self._indices: dict[int, tuple[Peer, object]] = {}
        # the data path's view of _indices: receiver index -> (peer, Keypair)
        self._sessions: dict[int, tuple[Peer, Keypair]] = {}
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
        # one re-armed deadline for all peer timers
        self._heap: list[tuple[float, int, Peer, int]] = []
        self._seq = itertools.count()
        self._call: IDelayedCall | None = None
        self._call_at: float | None = None
        self._closed = False

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
            peer.timers.persistent_keepalive = None
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
        peer.staged.clear()
        peer.timers.clear()
        peer.removed = True

    def _set_allowed(self, peer: Peer, nets: list) -> None:
        self._route_cache.clear()
        self.allowed_ips.remove_value(peer)
        for net in nets:
            self.allowed_ips.insert(net, peer)
        # an allowed IP belongs to one peer only: refresh everyone's view
        for p in self.peers.values():
            p.allowed_ips = self.allowed_ips.networks_of(p)

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
        self._sessions.pop(index, None)
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

    # ------------------------------------------------------------------ datagrams in

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        """The UDP entry point for one datagram (see :meth:`datagramsReceived`)."""
        self.datagramsReceived(((data, addr),))

    def datagramsReceived(self, batch: Iterable[tuple[bytes, tuple[str, int]]]) -> None:
        """The UDP entry point: ``(datagram, (host, port))`` pairs in arrival
        order, as one socket read returns them.  Never raises; every drop is
        counted.

        Transport data (the hot path) is handled inline and per *run* (a
        stretch of datagrams of one session): per datagram one header unpack,
        one session lookup, the AEAD, the replay bit and the inner-source check
        against the route cache; per run the session-age check, the timer
        events of "authenticated packet received" and the hand-over of the
        run's packets to the sink (:meth:`IPacketBatchSink.packetsReceived`),
        so the layer above answers a whole read at once.  Handshake messages
        end the current run and are handled in place, in order.
        """
        sessions = self._sessions
        cache = self._route_cache
        events = self.events
        now = self._seconds()
        unpack, nonce, ip4, ip6 = _TRANSPORT_RX, _NONCE, _IP4_LENGTH_SOURCE, _IP6_LENGTH_SOURCE
        # the current run: its session (receiver index), what it authenticated
        run_receiver = -1
        run_peer: Peer | None = None
        run_kp: Keypair | None = None
        run_src = None  # inner source address already checked for this run
        authenticated = data_count = nbytes = 0
        packets: list[bytes] = []
        last_addr = None
        for data, addr in batch:
            try:
                if len(data) >= _TRANSPORT_MIN:
                    mtype, receiver, counter = unpack(data)
                else:
                    mtype = receiver = -1
                if mtype != _TRANSPORT or receiver != run_receiver:
                    # not the current run's session: end the run, find the session
                    if authenticated:
                        self._settle_rx(run_peer, run_kp, now, authenticated, data_count,
                                        nbytes, packets, last_addr)
                        authenticated = data_count = nbytes = 0
                        packets = []
                    run_receiver = -1
                    if mtype != _TRANSPORT:
                        self._receive_control(data, addr)
                        continue
                    entry = sessions.get(receiver)
                    if entry is None:
                        events["drop_unknown_index"] += 1
                        continue
                    run_peer, run_kp = entry
                    if now >= run_kp.reject_at:
                        events["drop_expired"] += 1
                        continue
                    run_receiver = receiver
                    run_src = None
                    decrypt, replay = run_kp.receive.decrypt, run_kp.replay
                try:
                    # a bytes slice: the AEAD binding reads bytes much faster than a
                    # memoryview
                    packet = decrypt(nonce(counter), data[16:], None)
                except InvalidTag:
                    events["drop_decrypt"] += 1
                    continue
                if counter == replay.last + 1 and counter < _REJECT_MSGS:
                    replay.last = counter  # in order (ReplayFilter.accept_next, inlined)
                elif not replay.validate(counter):
                    events["drop_replay"] += 1
                    continue
                authenticated += 1
                nbytes += len(data)
                last_addr = addr
                if not packet:
                    continue  # keepalive
                data_count += 1
                # cryptokey routing, inbound: the inner source must be the peer's
                n = len(packet)
                if n >= 20 and packet[0] >> 4 == 4:
                    length, src = ip4(packet)
                elif n >= 40 and packet[0] >> 4 == 6:
                    length, src = ip6(packet)
                    length += 40
                else:
                    events["drop_malformed_inner"] += 1
                    continue
                if length > n or length < 20:
                    events["drop_malformed_inner"] += 1
                    continue
                if src != run_src:
                    if (cache.get(src) or self._route(src)) is not run_peer:
                        events["drop_disallowed_source"] += 1
                        continue
                    run_src = src
                if length != n:
                    packet = packet[:length]  # WireGuard's padding
                packets.append(packet)
            except Exception:
                events["drop_internal_error"] += 1
                log.failure("unexpected error handling a datagram from {addr}", addr=addr)
        if authenticated:
            self._settle_rx(run_peer, run_kp, now, authenticated, data_count, nbytes, packets,
                            last_addr)

    def _settle_rx(
        self, peer: Peer, kp: Keypair, now: float, authenticated: int, data: int,
        nbytes: int, packets: list[bytes], addr: tuple[str, int],
    ) -> None:
        """End a receive run of ``authenticated`` datagrams on session ``kp``
        (``data`` of them carried a packet, the rest were keepalives): the
        protocol's reactions to "authenticated packet received", once for the
        run, then the run's packets to the sink."""
        peer.endpoint = addr  # roaming: the latest authenticated source address
        if kp is not peer.current:
            if kp is peer.next:
                self._confirm_next(peer, kp, now)
        elif now > kp.rx_rekey_at and peer.handshake is None:
            self._initiate(peer, retry=False)
        peer.rx_bytes += nbytes
        t = peer.timers
        t.new_handshake = None
        if peer.persistent_keepalive:
            self._authenticated_traversal(peer, now)
        self._keepalive_rx += authenticated - data
        if data:
            self._data_rx += data
            if t.send_keepalive is None:
                self._arm(peer, "send_keepalive", now + self._keepalive_timeout)
            else:
                t.need_another_keepalive = True
        if packets:
            self._deliver(packets, peer)

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

    def _route(self, address: bytes) -> Peer | None:
        """Longest-prefix match of a packed address, remembered in the route cache."""
        peer = self.allowed_ips.lookup_packed(address)
        if peer is not None:
            cache = self._route_cache
            if len(cache) >= _ROUTE_CACHE_MAX:
                cache.clear()
            cache[address] = peer
        return peer

    def _confirm_next(self, peer: Peer, kp: Keypair, now: float) -> None:
        """First packet on the responder's new session: rotate it in."""
        if peer.previous is not None:
            self._release(peer.previous.local_index)
        peer.previous = peer.current
        peer.current = kp
        peer.next = None
        self._handshake_complete(peer, now)
        if peer.staged:
            self._flush_staged(peer)

    # ------------------------------------------------------------------ packets out

    def sendPacket(self, packet: bytes) -> bool:
        """Encrypt one plaintext IP packet to the peer that owns its destination;
        False if it was dropped (see :meth:`sendPackets`)."""
        return self.sendPackets((packet,)) == 1

    def sendPackets(self, packets: Iterable[bytes]) -> int:
        """Encrypt plaintext IP packets to the peers that own their destinations
        (cryptokey routing, outbound) and send them; returns how many were sent
        or staged for a handshake.  Drops are counted.

        Packets to a peer with a fresh current session (nothing staged, the
        new-handshake timer armed) are encrypted inline and leave per run of one
        peer's packets (``link.sendDatagrams``); everything else goes through
        :meth:`_send_data`.  Per-peer order is kept.
        """
        cache = self._route_cache
        now = self._seconds()
        link = self._link
        mtu = self.mtu
        rekey_after_messages = self._rekey_after_messages
        header, nonce = _TRANSPORT_HDR, _NONCE  # locals: the loop below is the hot path
        accepted = 0
        # the current run: its peer and session, the session's next counter
        run_peer: Peer | None = None
        kp: Keypair | None = None
        counter = 0
        out: list[bytes] = []
        append = out.append
        for packet in packets:
            n = len(packet)
            if n >= 20 and packet[0] >> 4 == 4:
                dst = packet[16:20]
            elif n >= 40 and packet[0] >> 4 == 6:
                dst = packet[24:40]
            else:
                self.events["drop_malformed_outbound"] += 1
                continue
            peer = cache.get(dst)
            if peer is None:
                peer = self._route(dst)
                if peer is None:
                    self.events["drop_no_route"] += 1
                    continue
            if peer is not run_peer or n > mtu or counter >= rekey_after_messages:
                if run_peer is not None:
                    kp.send_counter = counter
                    if out:
                        self._flush_tx(run_peer, out)
                        accepted += len(out)
                        out = []
                        append = out.append
                    run_peer = None
                kp = peer.current
                if (
                    kp is None
                    or n > mtu
                    or peer.staged
                    or kp.send_counter >= rekey_after_messages
                    or now >= kp.rekey_at
                    or peer.timers.new_handshake is None
                    or peer.persistent_keepalive
                    or peer.endpoint is None
                    or link is None
                ):
                    if self._send_data(peer, packet):
                        accepted += 1
                    continue
                run_peer = peer
                counter = kp.send_counter
                encrypt, remote_index = kp.send.encrypt, kp.remote_index
            if n & 15:
                pad = min(16 - (n & 15), mtu - n)
                if pad > 0:
                    packet += _ZERO_PAD[:pad]
            append(header(_TRANSPORT, remote_index, counter)
                   + encrypt(nonce(counter), packet, None))
            counter += 1
        if run_peer is not None:
            kp.send_counter = counter
            if out:
                self._flush_tx(run_peer, out)
                accepted += len(out)
        return accepted

    def _flush_tx(self, peer: Peer, datagrams: list[bytes]) -> None:
        """Send a run of data datagrams to ``peer``; the "data packet sent"
        timer event once for the run."""
        self._link_run(datagrams, peer.endpoint)
        peer.tx_bytes += sum(map(len, datagrams))
        peer.timers.send_keepalive = None
        self._data_tx += len(datagrams)

    def _send_data(self, peer: Peer, packet: bytes) -> bool:
        kp = peer.current
        now = self._seconds()
        cfg = self.timers
        if len(packet) > self.mtu:
            self.events["drop_oversize"] += 1
            return False
        if kp is None or kp.send_counter >= cfg.reject_after_messages or now >= kp.reject_at:
            peer.staged.append(packet)
            self._initiate(peer, retry=False)
            return True
        rem = len(packet) & 15
        if rem:
            pad = min(16 - rem, self.mtu - len(packet))
            if pad > 0:
                packet = packet + _ZERO_PAD[:pad]
        self._encrypt_and_send(peer, kp, packet, now)
        t = peer.timers
        if t.new_handshake is None:
            self._arm(
                peer,
                "new_handshake",
                now + cfg.keepalive_timeout + cfg.rekey_timeout
                + self._rng.uniform(0, cfg.rekey_timeout_jitter),
            )
        # keep the key fresh (initiator side)
        if kp.is_initiator and (kp.send_counter >= cfg.rekey_after_messages or now >= kp.rekey_at):
            self._initiate(peer, retry=False)
        return True

    def _encrypt_and_send(self, peer: Peer, kp: Keypair, packet: bytes, now: float) -> None:
        counter = kp.send_counter
        kp.send_counter = counter + 1
        data = _TRANSPORT_HDR(C.MESSAGE_TRANSPORT, kp.remote_index, counter) + kp.send.encrypt(
            _NONCE(counter), packet, None
        )
        link = self.link
        endpoint = peer.endpoint
        if link is None or endpoint is None:
            self.events["drop_no_link" if link is None else "drop_no_endpoint"] += 1
        else:
            link.sendDatagram(data, endpoint)
            peer.tx_bytes += len(data)
            if packet:
                self._data_tx += 1
            else:
                self._keepalive_tx += 1
        peer.timers.send_keepalive = None
        if peer.persistent_keepalive:
            self._authenticated_traversal(peer, now)

    def _send_keepalive(self, peer: Peer) -> None:
        now = self._now()
        kp = peer.current
        if kp is None or now >= kp.reject_at:
            return
        self._encrypt_and_send(peer, kp, b"", now)

    def _flush_staged(self, peer: Peer) -> None:
        staged = list(peer.staged)
        peer.staged.clear()
        for packet in staged:
            self._send_data(peer, packet)
