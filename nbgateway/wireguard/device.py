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

from nbgateway.interfaces import IDatagramLink, IPacketSender, IPacketSink
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
_NONCE = struct.Struct("<4xQ")
_TRANSPORT_RX = struct.Struct("<IQ")
_TRANSPORT_HDR = TRANSPORT_HEADER.pack
_ZERO_PAD = bytes(C.PADDING_MULTIPLE)

_ROUTE_CACHE_MAX = 4096
_REJECT_AFTER_MESSAGES = C.REJECT_AFTER_MESSAGES
_RING_MASK = C.REPLAY_RING_BLOCKS - 1
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
        self._rekey_after_time = self.timers.rekey_after_time
        self._rekey_after_messages = self.timers.rekey_after_messages
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
        self.index_registry = index_registry
        self.counters: Counter[str] = Counter()
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
        if self._indices.pop(index, None) is not None and self.index_registry is not None:
            self.index_registry.release(index)

    def _send(self, peer: Peer, data: bytes) -> bool:
        if peer.endpoint is None:
            self.counters["drop_no_endpoint"] += 1
            return False
        link = self.link
        if link is None:
            self.counters["drop_no_link"] += 1
            return False
        link.sendDatagram(data, peer.endpoint)
        return True

    # ------------------------------------------------------------------ datagrams in

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        """The UDP entry point.  Never raises; every drop is counted."""
        if self._closed:
            return
        try:
            n = len(data)
            if n >= C.MESSAGE_TRANSPORT_MIN_SIZE and data[0] == C.MESSAGE_TRANSPORT and not (
                data[1] or data[2] or data[3]
            ):
                self._receive_transport(data, addr)
                return
            if n < 4:
                self.counters["drop_malformed"] += 1
                return
            mtype = _U32.unpack_from(data)[0]
            if mtype == C.MESSAGE_INITIATION and n == C.MESSAGE_INITIATION_SIZE:
                self._receive_initiation(bytes(data), addr)
            elif mtype == C.MESSAGE_RESPONSE and n == C.MESSAGE_RESPONSE_SIZE:
                self._receive_response(bytes(data), addr)
            elif mtype == C.MESSAGE_COOKIE_REPLY and n == C.MESSAGE_COOKIE_REPLY_SIZE:
                self._receive_cookie_reply(bytes(data))
            else:
                self.counters["drop_malformed"] += 1
        except Exception:
            self.counters["drop_internal_error"] += 1
            log.failure("unexpected error handling a datagram from {addr}", addr=addr)

    def _receive_transport(self, data: bytes, addr) -> None:
        receiver, counter = _TRANSPORT_RX.unpack_from(data, 4)
        entry = self._indices.get(receiver)
        if entry is None:
            self.counters["drop_unknown_index"] += 1
            return
        peer, kp = entry
        if kp.__class__ is not Keypair:
            self.counters["drop_unknown_index"] += 1
            return
        now = self._seconds()
        cfg = self.timers
        if now - kp.created >= cfg.reject_after_time:
            self.counters["drop_expired"] += 1
            return
        try:
            packet = kp.receive.decrypt(_NONCE.pack(counter), memoryview(data)[16:], None)
        except InvalidTag:
            self.counters["drop_decrypt"] += 1
            return
        replay = kp.replay
        last = replay.last
        if counter > last and (counter ^ last) < 64 and counter < _REJECT_AFTER_MESSAGES:
            # in-order fast path: newer counter in the same 64-bit block
            replay.ring[(counter >> 6) & _RING_MASK] |= 1 << (counter & 63)
            replay.last = counter
        elif not replay.validate(counter):
            self.counters["drop_replay"] += 1
            return
        if kp is not peer.current:
            if kp is peer.next:
                # first packet on the responder's new session: rotate it in
                if peer.previous is not None:
                    self._release(peer.previous.local_index)
                peer.previous = peer.current
                peer.current = kp
                peer.next = None
                self._handshake_complete(peer, now)
                if peer.staged:
                    self._flush_staged(peer)
        elif (
            kp.is_initiator
            and peer.handshake is None
            and now - kp.created
            > cfg.reject_after_time - cfg.keepalive_timeout - cfg.rekey_timeout
        ):
            self._initiate(peer, retry=False)
        peer.endpoint = addr  # roaming: authenticated packet from a new address
        t = peer.timers
        t.new_handshake = None
        if peer.persistent_keepalive:
            self._authenticated_traversal(peer, now)
        peer.rx_bytes += len(data)
        if not packet:
            self.counters["keepalive_rx"] += 1
            return
        self.counters["data_rx"] += 1
        if t.send_keepalive is None:
            self._arm(peer, "send_keepalive", now + cfg.keepalive_timeout)
        else:
            t.need_another_keepalive = True
        # cryptokey routing, inbound: the inner source must belong to this peer
        version = packet[0] >> 4
        n = len(packet)
        if version == 4 and n >= 20:
            length = (packet[2] << 8) | packet[3]
            src = packet[12:16]
        elif version == 6 and n >= 40:
            length = ((packet[4] << 8) | packet[5]) + 40
            src = packet[8:24]
        else:
            self.counters["drop_malformed_inner"] += 1
            return
        if length > n or length < 20:
            self.counters["drop_malformed_inner"] += 1
            return
        cache = self._route_cache
        owner = cache.get(src)
        if owner is None:
            owner = self.allowed_ips.lookup_packed(src)
            if owner is not None:
                if len(cache) >= _ROUTE_CACHE_MAX:
                    cache.clear()
                cache[src] = owner
        if owner is not peer:
            self.counters["drop_disallowed_source"] += 1
            return
        if length != n:
            packet = packet[:length]  # strip WireGuard padding
        sink = self.sink
        if sink is None:
            self.counters["drop_no_sink"] += 1
            return
        sink.packetReceived(packet, peer.public_key)

    # ------------------------------------------------------------------ packets out

    def sendPacket(self, packet: bytes) -> bool:
        """Encrypt one plaintext IP packet to the peer that owns its destination."""
        n = len(packet)
        if n >= 20 and packet[0] >> 4 == 4:
            dst = packet[16:20]
        elif n >= 40 and packet[0] >> 4 == 6:
            dst = packet[24:40]
        else:
            self.counters["drop_malformed_outbound"] += 1
            return False
        if n > self.mtu:
            self.counters["drop_oversize"] += 1
            return False
        cache = self._route_cache
        peer = cache.get(dst)
        if peer is None:
            peer = self.allowed_ips.lookup_packed(dst)
            if peer is None:
                self.counters["drop_no_route"] += 1
                return False
            if len(cache) >= _ROUTE_CACHE_MAX:
                cache.clear()
            cache[dst] = peer
        kp = peer.current
        now = self._seconds()
        if (
            kp is None
            or peer.staged
            or kp.send_counter >= self._rekey_after_messages
            or now - kp.created >= self._rekey_after_time
            or peer.timers.new_handshake is None
            or peer.persistent_keepalive
        ):
            return self._send_data(peer, packet)
        # fast path: established fresh session, timers already armed
        if n & 15:
            pad = min(16 - (n & 15), self.mtu - n)
            if pad > 0:
                packet = packet + _ZERO_PAD[:pad]
        counter = kp.send_counter
        kp.send_counter = counter + 1
        data = _TRANSPORT_HDR(C.MESSAGE_TRANSPORT, kp.remote_index, counter) + kp.send.encrypt(
            _NONCE.pack(counter), packet, None
        )
        link = self.link
        endpoint = peer.endpoint
        if link is None or endpoint is None:
            self.counters["drop_no_link" if link is None else "drop_no_endpoint"] += 1
            return False
        link.sendDatagram(data, endpoint)
        peer.tx_bytes += len(data)
        self.counters["data_tx"] += 1
        peer.timers.send_keepalive = None
        return True

    def _send_data(self, peer: Peer, packet: bytes) -> bool:
        kp = peer.current
        now = self.clock.seconds()
        cfg = self.timers
        if (
            kp is None
            or kp.send_counter >= cfg.reject_after_messages
            or now - kp.created >= cfg.reject_after_time
        ):
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
        if kp.is_initiator and (
            kp.send_counter >= cfg.rekey_after_messages
            or now - kp.created >= cfg.rekey_after_time
        ):
            self._initiate(peer, retry=False)
        return True

    def _encrypt_and_send(self, peer: Peer, kp: Keypair, packet: bytes, now: float) -> None:
        counter = kp.send_counter
        kp.send_counter = counter + 1
        data = _TRANSPORT_HDR(C.MESSAGE_TRANSPORT, kp.remote_index, counter) + kp.send.encrypt(
            _NONCE.pack(counter), packet, None
        )
        link = self.link
        endpoint = peer.endpoint
        if link is None or endpoint is None:
            self.counters["drop_no_link" if link is None else "drop_no_endpoint"] += 1
        else:
            link.sendDatagram(data, endpoint)
            peer.tx_bytes += len(data)
            self.counters["data_tx" if packet else "keepalive_tx"] += 1
        peer.timers.send_keepalive = None
        if peer.persistent_keepalive:
            self._authenticated_traversal(peer, now)

    def _send_keepalive(self, peer: Peer) -> None:
        now = self._now()
        kp = peer.current
        if kp is None or now - kp.created >= self.timers.reject_after_time:
            return
        self._encrypt_and_send(peer, kp, b"", now)

    def _flush_staged(self, peer: Peer) -> None:
        staged = list(peer.staged)
        peer.staged.clear()
        for packet in staged:
            self._send_data(peer, packet)
