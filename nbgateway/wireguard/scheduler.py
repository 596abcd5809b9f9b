"""The device's timer scheduling (whitepaper section 6): every peer's named
deadlines (:class:`~nbgateway.wireguard.timers.PeerTimers`) are collected in one
heap and served by ONE re-armed ``IDelayedCall``; :meth:`TimerScheduler._expire`
runs the protocol's reaction to each expired timer.

A mixin of :class:`~nbgateway.wireguard.device.WireGuardDevice` (it uses the
device's clock, counters and handshake methods).
"""

from __future__ import annotations

import heapq

from twisted.logger import Logger

from nbgateway.wireguard.peer import Peer

log = Logger()


class TimerScheduler:
    """Timer deadlines of all peers behind one delayed call."""

    __slots__ = ()  # the device has slots

    def _arm(self, peer: Peer, name: str, when: float | None) -> None:
        t = peer.timers
        setattr(t, name, when)
        if when is None or peer.removed:
            return
        if t.heap_at is None or when < t.heap_at:
            t.heap_generation += 1
            t.heap_at = when
            heapq.heappush(self._heap, (when, next(self._seq), peer, t.heap_generation))
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
            t = peer.timers  # exists: the peer was armed
            if peer.removed or gen != t.heap_generation:
                continue
            t.heap_at = None
            due.append(peer)
        for peer in due:
            try:
                self._expire(peer, now)
            except Exception:
                log.failure("timer handling failed for {peer!r}", peer=peer)
            t = peer.timers
            nxt = t.next_deadline()
            if (
                nxt is not None
                and not peer.removed
                and (t.heap_at is None or nxt < t.heap_at)
            ):
                t.heap_generation += 1
                t.heap_at = nxt
                heapq.heappush(heap, (nxt, next(self._seq), peer, t.heap_generation))
        # discard stale heads so the heap stays small
        while heap and (heap[0][2].removed
                        or heap[0][3] != heap[0][2].timers.heap_generation):
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
                self.events["handshake_gave_up"] += 1
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
            self.events["handshake_no_reply"] += 1
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
