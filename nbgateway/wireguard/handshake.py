"""The device's handshake side: initiating (with REKEY_TIMEOUT rate limiting and
retries), consuming initiations and responses (MAC1/MAC2, under-load cookie
replies, TAI64N replay and flood protection), cookie replies, and installing
the resulting session keypairs (previous/current/next rotation).

A mixin of :class:`~nbgateway.wireguard.device.WireGuardDevice`; the pure
Noise computations live in :mod:`nbgateway.wireguard.noise`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from nbgateway.wireguard import constants as C
from nbgateway.wireguard import noise
from nbgateway.wireguard._crypto import tai64n
from nbgateway.wireguard.messages import (
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    RESPONSE_MAC1_OFFSET,
    RESPONSE_MAC2_OFFSET,
    CookieReply,
    Initiation,
    Response,
)
from nbgateway.wireguard.peer import Keypair, Peer

#: under load: handshake messages per second and burst one source IP may have
#: past MAC2 (wireguard-go's ratelimiter: 20/s, burst 5), and addresses kept
SOURCE_RATE = 20.0
SOURCE_BURST = 5.0
SOURCE_TABLE_MAX = 4096


class HandshakeMixin:
    """Noise_IKpsk2 handshakes of a device (both roles) and cookies."""

    __slots__ = ()  # the device has slots

    #: a global under-load signal (``now -> bool``), set by a
    #: :class:`~nbgateway.wireguard.mux.DeviceMux` with a handshake queue; the
    #: device is under load when it says so or its own rate says so
    load_probe: Callable[[float], bool] | None = None

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

    def _under_load(self, now: float) -> bool:
        if now - self._hs_window_start >= 1.0:
            self._hs_window_start = now
            self._hs_window_count = 0
        self._hs_window_count += 1
        if self._hs_window_count > self.under_load_threshold:
            self._under_load_until = now + C.UNDER_LOAD_AFTER_TIME
        probe = self.load_probe
        if probe is not None and probe(now):
            return True
        return now < self._under_load_until

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
            self.events["drop_no_endpoint"] += 1
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
            self.events["handshake_initiation_tx"] += 1
            peer.timers.send_keepalive = None  # any authenticated packet sent
            self._authenticated_traversal(peer, now)
        jitter = self._rng.uniform(0, cfg.rekey_timeout_jitter)
        self._arm(peer, "retransmit_handshake", now + cfg.rekey_timeout + jitter)

    def _check_macs(
        self, data: bytes, mac1_off: int, mac2_off: int, sender: int, addr, now: float
    ) -> bool:
        if not self._checker.check_mac1(data, mac1_off):
            self.events["drop_bad_mac1"] += 1
            return False
        if self._under_load(now):
            if not self._checker.check_mac2(data, mac2_off, addr, now):
                reply = self._checker.make_reply(data, mac1_off, sender, addr, now)
                if self.link is not None:
                    self.link.sendDatagram(reply, addr)
                self.events["cookie_reply_tx"] += 1
                return False
            if not self._source_allowed(addr, now):
                self.events["drop_source_rate"] += 1
                return False
        return True

    def _source_allowed(self, addr, now: float) -> bool:
        """Under load, a handshake message past MAC2 from one source IP takes a
        token (:data:`SOURCE_RATE` per second, :data:`SOURCE_BURST` at most;
        wireguard-go's ratelimiter): one address cannot spend the DH work every
        account behind the shared port needs.  At most :data:`SOURCE_TABLE_MAX`
        addresses are kept (full buckets are forgotten first, else the oldest)."""
        table = self._source_buckets
        if table is None:
            table = self._source_buckets = {}
        ip = addr[0] if addr else ""
        entry = table.pop(ip, None)
        if entry is None:
            tokens = SOURCE_BURST
            if len(table) >= SOURCE_TABLE_MAX:
                full = [k for k, (t, st) in table.items()
                        if t + (now - st) * SOURCE_RATE >= SOURCE_BURST]
                for k in full or [next(iter(table))]:
                    del table[k]
        else:
            tokens = min(SOURCE_BURST, entry[0] + (now - entry[1]) * SOURCE_RATE)
        allowed = tokens >= 1.0
        table[ip] = (tokens - 1.0 if allowed else tokens, now)  # re-inserted: the newest
        return allowed

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
            self.events["drop_" + ("unknown_peer" if exc.reason == "unknown_peer"
                                     else "decrypt" if exc.reason == "decrypt"
                                     else "malformed")] += 1
            return
        peer = peers[consumed.remote_static]
        if consumed.timestamp <= peer.latest_timestamp:
            self.events["drop_stale_timestamp"] += 1
            return
        last = peer.last_initiation_consumed
        if last is not None and now - last < C.HANDSHAKE_INITIATION_RATE:
            self.events["drop_initiation_flood"] += 1
            return
        peer.latest_timestamp = consumed.timestamp
        peer.last_initiation_consumed = now
        self.events["handshake_initiation_rx"] += 1

        local_index = self._new_index(peer, None)
        try:
            resp, keys = noise.create_response(
                consumed, peer.preshared_key, local_index, self._urandom(32)
            )
        except noise.HandshakeError:
            self._release(local_index)
            self.events["drop_malformed"] += 1
            return
        kp = Keypair(keys.send, keys.receive, local_index, consumed.remote_index, now, False,
                     self.timers)
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
        self.events["handshake_response_tx"] += 1
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
            self.events["drop_unknown_index"] += 1
            return
        peer, state = entry
        try:
            keys = noise.consume_response(self.identity, state, msg)
        except noise.HandshakeError:
            self.events["drop_decrypt"] += 1
            return
        self.events["handshake_response_rx"] += 1
        peer.handshake = None
        kp = Keypair(keys.send, keys.receive, state.local_index, msg.sender, now, True, self.timers)
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
        if peer.has_staged:
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
        self.events["handshake_completed"] += 1

    def _receive_cookie_reply(self, data: bytes) -> None:
        reply = CookieReply.parse(data)
        entry = self._indices.get(reply.receiver)
        if entry is None:
            self.events["drop_unknown_index"] += 1
            return
        peer = entry[0]
        if peer.cookies.consume_reply(reply, self._now()):
            self.events["cookie_reply_rx"] += 1
        else:
            self.events["drop_bad_cookie"] += 1
