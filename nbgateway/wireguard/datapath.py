"""The transport data path of :class:`~nbgateway.wireguard.device.WireGuardDevice`
(a mixin, like the handshake and timer mixins): datagrams in, packets out.

Everything here works per *run*, a stretch of consecutive packets of one session:

- in (:meth:`TransportPath.datagramsReceived`): per datagram one header unpack,
  the AEAD, the replay check and the inner-source check (cryptokey routing,
  inbound); per run the session lookup and age check, the timer events of
  "authenticated packet received", roaming and the hand-over to the sink;
- out (:meth:`TransportPath.sendPackets`): per packet the route-cache lookup and
  the AEAD; per run the session checks and the hand-over to the link, with
  anything unusual (no session, rekey due, staged packets, timers to arm)
  going through :meth:`TransportPath._send_data`.

Session deadlines are precomputed on the keypair (one float compare per run),
the replay filter accepts in-order counters by advancing ``last``, and the
per-packet counters are plain ints.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from twisted.logger import Logger

from nbgateway.wireguard import constants as C
from nbgateway.wireguard.messages import TRANSPORT_HEADER
from nbgateway.wireguard.peer import Keypair, Peer

log = Logger()

_NONCE = struct.Struct("<4xQ").pack
_TRANSPORT_RX = struct.Struct("<IIQ").unpack_from
_TRANSPORT_HDR = TRANSPORT_HEADER.pack
_TRANSPORT = C.MESSAGE_TRANSPORT
_TRANSPORT_MIN = C.MESSAGE_TRANSPORT_MIN_SIZE
#: zero padding by length (a tuple index instead of a slice of zeros)
_PADS = tuple(bytes(i) for i in range(C.PADDING_MULTIPLE))
_REJECT_MSGS = C.REJECT_AFTER_MESSAGES
# inner header fields for the inbound source check: (total length, source)
_IP4_LENGTH_SOURCE = struct.Struct("!2xH8x4s").unpack_from
_IP6_LENGTH_SOURCE = struct.Struct("!4xH2x16s").unpack_from  # (payload length, source)
#: the new-handshake timer's jitter source (see ``_arm_new_handshake``)
_JITTER_RANDOM = random.Random()
_JITTER_RANDOM_RANDOM = _JITTER_RANDOM.random
ROUTE_CACHE_MAX = 4096  # destination -> peer entries in front of the LPM table


class TransportPath:
    """Transport data in and out; mixed into the device, whose state it uses
    (``_indices``, ``_route_cache``, ``allowed_ips``, ``events``, timers...)."""

    __slots__ = ()  # the device has slots

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
        indices = self._indices
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
                    run_receiver = -1
                    if authenticated:
                        self._settle_rx(run_peer, run_kp, now, authenticated, data_count,
                                        nbytes, packets, last_addr)
                        authenticated = data_count = nbytes = 0
                        packets = []
                    if mtype != _TRANSPORT:
                        self._receive_control(data, addr)
                        continue
                    entry = indices.get(receiver)
                    if entry is None or entry[1].__class__ is not Keypair:  # or a handshake's
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
                if n >= 20 and (packet[0] == 0x45 or packet[0] >> 4 == 4):
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
        run, then the run's packets to the sink.  Never raises."""
        try:
            peer.endpoint = addr  # roaming: the latest authenticated source address
            if kp is not peer.current:
                if kp is peer.next:
                    self._confirm_next(peer, kp, now)
            elif now > kp.rx_rekey_at and peer.handshake is None:
                self._initiate(peer, retry=False)
            peer.rx_bytes += nbytes
            t = peer._timers or peer.timers
            t.new_handshake = None
            if peer.persistent_keepalive:
                self._authenticated_traversal(peer, now)
            self._keepalive_rx += authenticated - data
            if data:
                self._data_rx += data
                if t.send_keepalive is None:
                    # _arm: the heap push only before an earlier queued deadline
                    when = t.send_keepalive = now + self.timers.keepalive_timeout
                    at = t.heap_at
                    if at is None or when < at:
                        self._arm(peer, "send_keepalive", when)
                else:
                    t.need_another_keepalive = True
            if packets:
                # _deliver, inlined (once per read)
                sink_run = self._sink_run
                if sink_run is None:
                    self.events["drop_no_sink"] += len(packets)
                else:
                    try:
                        sink_run(packets, peer.public_key)
                    except Exception:
                        self.events["drop_internal_error"] += 1
                        log.failure("the packet sink failed")
        except Exception:  # never into the reactor, and the next run goes on
            self.events["drop_internal_error"] += 1
            log.failure("unexpected error finishing a receive run from {addr}", addr=addr)

    def _route(self, address: bytes) -> Peer | None:
        """Longest-prefix match of a packed address, remembered in the route cache."""
        peer = self.allowed_ips.lookup_packed(address)
        if peer is not None:
            cache = self._route_cache
            if len(cache) >= ROUTE_CACHE_MAX:
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
        if peer.has_staged:
            self._flush_staged(peer)

    # ------------------------------------------------------------------ packets out

    #: :meth:`sendPacket` takes the IPv4 destination its caller wrote
    #: (the netstack's fused output passes it: ``Stack._dst_sender``)
    packet_sender_takes_dst = True

    def sendPacket(self, packet: bytes, dst: bytes | None = None) -> bool:
        """Encrypt one plaintext IP packet to the peer that owns its destination;
        False if it was dropped (see :meth:`sendPackets`).

        An IPv4 packet to a cached route whose peer has a fresh current
        session (nothing staged, no rekey due) is encrypted and sent here,
        as :meth:`sendPackets` does for a run of one (a lone response segment
        of the netstack's fused output); anything else goes through it.
        ``dst``: the packet's IPv4 destination (4 raw bytes), given by a
        caller that wrote it into the header (the packet is then IPv4 with
        that destination): the route is looked up without reading it back."""
        n = len(packet)
        if dst is None and n >= 20 and (packet[0] == 0x45 or packet[0] >> 4 == 4):
            dst = packet[16:20]
        if dst is not None:
            peer = self._route_cache.get(dst)
            if peer is not None:
                kp = peer.current
                now = self._seconds()
                if not (
                    kp is None
                    or n > self.mtu
                    or peer._staged  # has_staged
                    or kp.send_counter >= self._rekey_after_messages
                    or now >= kp.rekey_at
                    or peer.endpoint is None
                    or self._link is None
                ):
                    t = peer._timers or peer.timers
                    if t.new_handshake is None:
                        if self._rng.__class__ is random.SystemRandom:
                            # _arm_new_handshake, inlined (once per exchange when
                            # requests come alone: every reply of the peer disarms it)
                            cfg = self.timers
                            when = t.new_handshake = now + cfg.keepalive_timeout + \
                                cfg.rekey_timeout + _JITTER_RANDOM_RANDOM() * \
                                cfg.rekey_timeout_jitter
                            at = t.heap_at
                            if at is None or when < at:
                                self._arm(peer, "new_handshake", when)
                        else:
                            self._arm_new_handshake(peer, now)
                    counter = kp.send_counter
                    if n & 15:
                        # to a multiple of 16, not beyond the MTU (min() parses
                        # keywords: about 400 instructions more than this)
                        pad = 16 - (n & 15)
                        if pad > self.mtu - n:
                            pad = self.mtu - n
                        if pad > 0:
                            packet += _PADS[pad]
                    data = _TRANSPORT_HDR(_TRANSPORT, kp.remote_index, counter) + \
                        kp.send.encrypt(_NONCE(counter), packet, None)
                    kp.send_counter = counter + 1
                    # _flush_tx of a run of one (IDatagramLink.sendDatagram: what
                    # a batch link's sendDatagrams does with [data])
                    self._link.sendDatagram(data, peer.endpoint)
                    peer.tx_bytes += len(data)
                    t.send_keepalive = None
                    self._data_tx += 1
                    if peer.persistent_keepalive:
                        self._authenticated_traversal(peer, now)
                    return True
        return self.sendPackets((packet,)) == 1

    def sendPackets(self, packets: Iterable[bytes]) -> int:
        """Encrypt plaintext IP packets to the peers that own their destinations
        (cryptokey routing, outbound) and send them; returns how many were sent
        or staged for a handshake.  Drops are counted.

        Packets to a peer with a fresh current session (nothing staged) are
        encrypted inline and leave per run of one peer's packets
        (``link.sendDatagrams``), arming the new-handshake timer for the run
        when it is not armed (the first packet sent after a packet received:
        once per exchange of a request/response connection); everything else
        goes through :meth:`_send_data`.  Per-peer order is kept.
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
            if n >= 20 and (packet[0] == 0x45 or packet[0] >> 4 == 4):
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
                        self._flush_tx(run_peer, out, now)
                        accepted += len(out)
                        out = []
                        append = out.append
                    run_peer = None
                kp = peer.current
                if (
                    kp is None
                    or n > mtu
                    or peer._staged  # has_staged
                    or kp.send_counter >= rekey_after_messages
                    or now >= kp.rekey_at
                    or peer.endpoint is None
                    or link is None
                ):
                    if self._send_data(peer, packet):
                        accepted += 1
                    continue
                if (peer._timers or peer.timers).new_handshake is None:
                    self._arm_new_handshake(peer, now)
                run_peer = peer
                counter = kp.send_counter
                encrypt, remote_index = kp.send.encrypt, kp.remote_index
            if n & 15:
                pad = 16 - (n & 15)
                if pad > mtu - n:
                    pad = mtu - n
                if pad > 0:
                    packet += _PADS[pad]
            append(header(_TRANSPORT, remote_index, counter)
                   + encrypt(nonce(counter), packet, None))
            counter += 1
        if run_peer is not None:
            kp.send_counter = counter
            if out:
                # _flush_tx, inlined for the last (usually the only) run
                k = len(out)
                self._link_run(out, run_peer.endpoint)
                run_peer.tx_bytes += sum(map(len, out)) if k > 1 else len(out[0])
                (run_peer._timers or run_peer.timers).send_keepalive = None
                self._data_tx += k
                if run_peer.persistent_keepalive:
                    self._authenticated_traversal(run_peer, now)
                accepted += k
        return accepted

    def _flush_tx(self, peer: Peer, datagrams: list[bytes], now: float) -> None:
        """Send a run of data datagrams to ``peer``; the "data packet sent"
        and "authenticated packet traversal" timer events once for the run."""
        self._link_run(datagrams, peer.endpoint)
        peer.tx_bytes += sum(map(len, datagrams))
        (peer._timers or peer.timers).send_keepalive = None
        self._data_tx += len(datagrams)
        if peer.persistent_keepalive:
            self._authenticated_traversal(peer, now)

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
            pad = 16 - rem
            if pad > self.mtu - len(packet):
                pad = self.mtu - len(packet)
            if pad > 0:
                packet = packet + _PADS[pad]
        self._encrypt_and_send(peer, kp, packet, now)
        if (peer._timers or peer.timers).new_handshake is None:
            self._arm_new_handshake(peer, now)
        # keep the key fresh (initiator side)
        if kp.is_initiator and (kp.send_counter >= cfg.rekey_after_messages or now >= kp.rekey_at):
            self._initiate(peer, retry=False)
        return True

    def _arm_new_handshake(self, peer: Peer, now: float) -> None:
        """Data sent and nothing received since: a new handshake if nothing
        arrives within keepalive + rekey timeout (+ jitter).  Armed once per
        exchange on a request/response peer, so the jitter does not come from
        the device's default ``SystemRandom`` (a getrandom() syscall per draw)
        but from a shared seeded generator: it spreads retries and needs no
        secrecy.  An injected generator (tests) is used as is."""
        cfg = self.timers
        rng = self._rng
        if rng.__class__ is random.SystemRandom:
            # uniform(0, j) is 0 + (j - 0) * random(): the same float, without
            # the Python-level call
            jitter = _JITTER_RANDOM_RANDOM() * cfg.rekey_timeout_jitter
        else:
            jitter = rng.uniform(0, cfg.rekey_timeout_jitter)
        when = now + cfg.keepalive_timeout + cfg.rekey_timeout + jitter
        # _arm, whose heap push is only needed before an earlier deadline of
        # the peer's is queued (on a busy peer the keepalive's usually is)
        t = peer._timers or peer.timers
        t.new_handshake = when
        at = t.heap_at
        if at is None or when < at:
            self._arm(peer, "new_handshake", when)

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
        (peer._timers or peer.timers).send_keepalive = None
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
