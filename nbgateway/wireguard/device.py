"""WireGuardDevice: the sans-IO WireGuard endpoint.

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

import heapq
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
from nbgateway.wireguard._crypto import tai64n
from nbgateway.wireguard.allowedips import AllowedIPs
from nbgateway.wireguard.cookie import CookieChecker
from nbgateway.wireguard.messages import (
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    RESPONSE_MAC1_OFFSET,
    RESPONSE_MAC2_OFFSET,
    TRANSPORT_HEADER,
    CookieReply,
    Initiation,
    Response,
)
from nbgateway.wireguard.peer import Keypair, Peer
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


class IndexRegistry:
    """Receiver indices shared by several devices behind one UDP port, so a
    datagram's receiver index names exactly one device (see :mod:`.mux`)."""

    def __init__(self) -> None:
        self.owners: dict[int, WireGuardDevice] = {}

    def claim(self, index: int, device: WireGuardDevice) -> bool:
        if index in self.owners:
            return False
        self.owners[index] = device
        return True

    def release(self, index: int) -> None:
        self.owners.pop(index, None)


@implementer(IPacketSender)
class WireGuardDevice:
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

    def _timestamp(self) -> bytes:
        ts = tai64n(self._walltime())
        if ts <= self._last_timestamp:
            secs, nanos = struct.unpack(">QI", self._last_timestamp)
            nanos += 1
            if nanos >= 1_000_000_000:
                secs, nanos = secs + 1, 0
            ts = struct.pack(">QI", secs, nanos)
        self._last_timestamp = ts
        return ts

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

    def _under_load(self, now: float) -> bool:
        if now - self._hs_window_start >= 1.0:
            self._hs_window_start = now
            self._hs_window_count = 0
        self._hs_window_count += 1
        if self._hs_window_count > self.under_load_threshold:
            self._under_load_until = now + C.UNDER_LOAD_AFTER_TIME
        return now < self._under_load_until

    # ------------------------------------------------------------------ timers

    def _arm(self, peer: Peer, name: str, when: float | None) -> None:
        setattr(peer.timers, name, when)
        if when is None or peer.removed:
            return
        if peer.heap_at is None or when < peer.heap_at:
            peer.heap_generation += 1
            peer.heap_at = when
            heapq.heappush(self._heap, (when, next(self._seq), peer, peer.heap_generation))
            if not self._closed and (self._call_at is None or when < self._call_at):
                self._rearm(when)

    def _rearm(self, when: float) -> None:
        delay = max(0.0, when - self._now())
        if self._call is not None and self._call.active():
            self._call.reset(delay)
        else:
            self._call = self.clock.callLater(delay, self._on_deadline)
        self._call_at = when

    def next_deadline(self) -> float | None:
        """The earliest armed peer timer (for inspection and tests)."""
        return self._call_at

    def _on_deadline(self) -> None:
        self._call = None
        self._call_at = None
        now = self._now()
        heap = self._heap
        due: list[Peer] = []
        while heap and heap[0][0] <= now:
            _, _, peer, gen = heapq.heappop(heap)
            if peer.removed or gen != peer.heap_generation:
                continue
            peer.heap_at = None
            due.append(peer)
        for peer in due:
            try:
                self._expire(peer, now)
            except Exception:
                log.failure("timer handling failed for {peer!r}", peer=peer)
            nxt = peer.timers.next_deadline()
            if (
                nxt is not None
                and not peer.removed
                and (peer.heap_at is None or nxt < peer.heap_at)
            ):
                peer.heap_generation += 1
                peer.heap_at = nxt
                heapq.heappush(heap, (nxt, next(self._seq), peer, peer.heap_generation))
        # discard stale heads so the heap stays small
        while heap and (heap[0][2].removed or heap[0][3] != heap[0][2].heap_generation):
            heapq.heappop(heap)
        if heap and not self._closed:
            self._rearm(heap[0][0])

    def _expire(self, peer: Peer, now: float) -> None:
        t = peer.timers
        cfg = self.timers
        if t.retransmit_handshake is not None and t.retransmit_handshake <= now:
            t.retransmit_handshake = None
            if t.handshake_attempts >= cfg.max_handshake_attempts:
                # REKEY_ATTEMPT_TIME exhausted: give up and drop what was staged.
                self.counters["handshake_gave_up"] += 1
                peer.staged.clear()
                self._drop_handshake(peer)
                t.send_keepalive = None
                if t.zero_key_material is None:
                    t.zero_key_material = now + cfg.reject_after_time * 3
            else:
                t.handshake_attempts += 1
                self._initiate(peer, retry=True)
        if t.send_keepalive is not None and t.send_keepalive <= now:
            t.send_keepalive = None
            self._send_keepalive(peer)
            if t.need_another_keepalive:
                t.need_another_keepalive = False
                t.send_keepalive = now + cfg.keepalive_timeout
        if t.new_handshake is not None and t.new_handshake <= now:
            t.new_handshake = None
            self.counters["handshake_no_reply"] += 1
            self._initiate(peer, retry=False)
        if t.zero_key_material is not None and t.zero_key_material <= now:
            t.zero_key_material = None
            self._zero_keys(peer)
        if t.persistent_keepalive is not None and t.persistent_keepalive <= now:
            t.persistent_keepalive = None
            self._send_keepalive(peer)

    def _zero_keys(self, peer: Peer) -> None:
        for kp in peer.keypairs():
            self._release(kp.local_index)
        peer.previous = peer.current = peer.next = None
        self._drop_handshake(peer)

    def _authenticated_traversal(self, peer: Peer, now: float) -> None:
        if peer.persistent_keepalive:
            self._arm(peer, "persistent_keepalive", now + peer.persistent_keepalive)

    # ------------------------------------------------------------------ handshake out

    def initiate(self, public_key: bytes) -> None:
        """Start a handshake with a peer now (subject to REKEY_TIMEOUT rate limiting)."""
        peer = self.peers[public_key]
        self._initiate(peer, retry=False)

    def _drop_handshake(self, peer: Peer) -> None:
        if peer.handshake is not None:
            self._release(peer.handshake.local_index)
            peer.handshake = None

    def _initiate(self, peer: Peer, retry: bool) -> None:
        now = self._now()
        cfg = self.timers
        if not retry:
            peer.timers.handshake_attempts = 0
        last = peer.last_initiation_sent
        if last is not None and now - last < cfg.rekey_timeout and not retry:
            return  # a handshake is already under way
        if peer.endpoint is None:
            self.counters["drop_no_endpoint"] += 1
            return
        self._drop_handshake(peer)
        state, msg = noise.create_initiation(
            self.identity,
            peer.public_key,
            peer.hash0,
            peer.static_static,
            peer.preshared_key,
            0,
            self._timestamp(),
            self._urandom(32),
        )
        index = self._new_index(peer, state)
        state.local_index = index
        msg = msg._replace(sender=index)
        peer.handshake = state
        peer.last_initiation_sent = now
        data = peer.cookies.add_macs(msg.pack_without_macs(), now)
        if self._send(peer, data):
            self.counters["handshake_initiation_tx"] += 1
            peer.timers.send_keepalive = None  # any authenticated packet sent
            self._authenticated_traversal(peer, now)
        jitter = self._rng.uniform(0, cfg.rekey_timeout_jitter)
        self._arm(peer, "retransmit_handshake", now + cfg.rekey_timeout + jitter)

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

    def _check_macs(
        self, data: bytes, mac1_off: int, mac2_off: int, sender: int, addr, now: float
    ) -> bool:
        if not self._checker.check_mac1(data, mac1_off):
            self.counters["drop_bad_mac1"] += 1
            return False
        if self._under_load(now) and not self._checker.check_mac2(data, mac2_off, addr, now):
            reply = self._checker.make_reply(data, mac1_off, sender, addr, now)
            if self.link is not None:
                self.link.sendDatagram(reply, addr)
            self.counters["cookie_reply_tx"] += 1
            return False
        return True

    def _receive_initiation(self, data: bytes, addr) -> None:
        now = self._now()
        msg = Initiation.parse(data)
        if not self._check_macs(
            data, INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET, msg.sender, addr, now
        ):
            return
        peers = self.peers

        def lookup(static: bytes) -> bytes | None:
            p = peers.get(static)
            return None if p is None else p.static_static

        try:
            consumed = noise.consume_initiation(self.identity, msg, lookup)
        except noise.HandshakeError as exc:
            self.counters["drop_" + ("unknown_peer" if exc.reason == "unknown_peer"
                                     else "decrypt" if exc.reason == "decrypt"
                                     else "malformed")] += 1
            return
        peer = peers[consumed.remote_static]
        if consumed.timestamp <= peer.latest_timestamp:
            self.counters["drop_stale_timestamp"] += 1
            return
        last = peer.last_initiation_consumed
        if last is not None and now - last < C.HANDSHAKE_INITIATION_RATE:
            self.counters["drop_initiation_flood"] += 1
            return
        peer.latest_timestamp = consumed.timestamp
        peer.last_initiation_consumed = now
        self.counters["handshake_initiation_rx"] += 1

        local_index = self._new_index(peer, None)
        try:
            resp, keys = noise.create_response(
                consumed, peer.preshared_key, local_index, self._urandom(32)
            )
        except noise.HandshakeError:
            self._release(local_index)
            self.counters["drop_malformed"] += 1
            return
        kp = Keypair(keys.send, keys.receive, local_index, consumed.remote_index, now, False)
        self._indices[local_index] = (peer, kp)
        # responder: the new session waits in `next` until the initiator uses it
        if peer.next is not None:
            self._release(peer.next.local_index)
        if peer.previous is not None:
            self._release(peer.previous.local_index)
        peer.previous = None
        peer.next = kp
        peer.endpoint = addr
        out = peer.cookies.add_macs(resp.pack_without_macs(), now)
        self._send(peer, out)
        self.counters["handshake_response_tx"] += 1
        peer.timers.new_handshake = None  # any authenticated packet received
        peer.timers.send_keepalive = None  # any authenticated packet sent
        self._authenticated_traversal(peer, now)
        self._arm(peer, "zero_key_material", now + self.timers.reject_after_time * 3)

    def _receive_response(self, data: bytes, addr) -> None:
        now = self._now()
        msg = Response.parse(data)
        if not self._check_macs(
            data, RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET, msg.sender, addr, now
        ):
            return
        entry = self._indices.get(msg.receiver)
        if entry is None or not isinstance(entry[1], noise.InitiatorState):
            self.counters["drop_unknown_index"] += 1
            return
        peer, state = entry
        try:
            keys = noise.consume_response(self.identity, state, msg)
        except noise.HandshakeError:
            self.counters["drop_decrypt"] += 1
            return
        self.counters["handshake_response_rx"] += 1
        peer.handshake = None
        kp = Keypair(keys.send, keys.receive, state.local_index, msg.sender, now, True)
        self._indices[state.local_index] = (peer, kp)
        # initiator: the new session is current at once
        if peer.next is not None:
            if peer.previous is not None:
                self._release(peer.previous.local_index)
            if peer.current is not None:
                self._release(peer.current.local_index)
            peer.previous = peer.next
            peer.next = None
        else:
            if peer.previous is not None:
                self._release(peer.previous.local_index)
            peer.previous = peer.current
        peer.current = kp
        peer.endpoint = addr
        self._handshake_complete(peer, now)
        self._arm(peer, "zero_key_material", now + self.timers.reject_after_time * 3)
        self._authenticated_traversal(peer, now)
        if peer.staged:
            self._flush_staged(peer)
        else:
            self._send_keepalive(peer)  # confirms the session to the responder

    def _handshake_complete(self, peer: Peer, now: float) -> None:
        t = peer.timers
        t.retransmit_handshake = None
        t.handshake_attempts = 0
        t.new_handshake = None
        peer.last_handshake = now
        peer.last_initiation_sent = None
        self.counters["handshake_completed"] += 1

    def _receive_cookie_reply(self, data: bytes) -> None:
        reply = CookieReply.parse(data)
        entry = self._indices.get(reply.receiver)
        if entry is None:
            self.counters["drop_unknown_index"] += 1
            return
        peer = entry[0]
        if peer.cookies.consume_reply(reply, self._now()):
            self.counters["cookie_reply_rx"] += 1
        else:
            self.counters["drop_bad_cookie"] += 1

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
