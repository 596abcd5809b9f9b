"""The per-exchange timer events of a request/response peer ("data sent":
new handshake due if nothing comes back; "data received": keepalive due if
nothing is sent) are armed without a heap push while an earlier deadline of
the peer's is queued; the deadlines, the jitter draws and the firing times
stay exactly what ``_arm`` with ``uniform()`` gave (task.Clock)."""

from __future__ import annotations

import random

from nbgateway.wireguard import datapath
from nbgateway.wireguard.testing import ipv4_packet
from nbgateway.wireguard.timers import TimerConfig

from .conftest import A_ADDR, make_pair

CFG = TimerConfig()


def _exchanges(p, n: int, gap: float) -> None:
    for i in range(n):
        p.clock.advance(gap)
        p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"req %d" % i))
        p.net.pump()
        p.clock.advance(gap)
        p.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"resp %d" % i))
        p.net.pump()


def test_busy_peer_timers_fire_at_their_deadlines_and_the_heap_stays_small():
    p = make_pair()
    _exchanges(p, 1, 0.01)
    _exchanges(p, 400, 0.01)  # 8 s of exchanges: well past the first keepalive deadline
    assert len(p.b._heap) <= 4 and len(p.a._heap) <= 4  # no push per exchange
    a_on_b = p.b.peers[p.a.public_key]
    b_on_a = p.a.peers[p.b.public_key]
    # a received b's last response: its keepalive is due 10 s later (nothing sent since)
    t_a = p.clock.seconds()
    assert b_on_a.timers.send_keepalive == t_a + CFG.keepalive_timeout
    # from now on nothing from a reaches b; b sends once more
    p.net.filter = lambda src, dst, d: [] if src == A_ADDR else [d]
    p.clock.advance(0.01)
    p.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"last"))
    t_b = p.clock.seconds()
    due = a_on_b.timers.new_handshake
    assert t_b + CFG.keepalive_timeout + CFG.rekey_timeout <= due <= \
        t_b + CFG.keepalive_timeout + CFG.rekey_timeout + CFG.rekey_timeout_jitter
    p.net.pump()
    # a received "last" too and sent nothing: still due 10 s after the first
    # unanswered receive (another one is flagged, WireGuard's rule)
    ka_due = b_on_a.timers.send_keepalive
    assert ka_due == t_a + CFG.keepalive_timeout and b_on_a.timers.need_another_keepalive
    keepalives = p.a.counters["keepalive_tx"]
    p.clock.advance(ka_due - p.clock.seconds() - 0.001)
    assert p.a.counters["keepalive_tx"] == keepalives
    p.clock.advance(0.002)
    assert p.a.counters["keepalive_tx"] == keepalives + 1  # on time, not before
    p.clock.advance(due - p.clock.seconds() - 0.001)
    assert p.b.counters["handshake_no_reply"] == 0
    p.clock.advance(0.002)
    assert p.b.counters["handshake_no_reply"] == 1  # on time, not before


def test_the_default_jitter_is_uniforms_draw_and_an_injected_generator_is_used():
    p = make_pair()
    _exchanges(p, 1, 0.01)
    a_on_b = p.b.peers[p.a.public_key]
    # the default (SystemRandom) device draws from the shared seeded generator
    p.b._rng = random.SystemRandom()
    datapath._JITTER_RANDOM.seed(1234)
    twin = random.Random(1234)
    for i in range(5):
        p.clock.advance(0.01)
        p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"req %d" % i))
        p.net.pump()
        now = p.clock.seconds()
        p.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"resp %d" % i))
        assert a_on_b.timers.new_handshake == now + CFG.keepalive_timeout + \
            CFG.rekey_timeout + twin.uniform(0, CFG.rekey_timeout_jitter)
        p.net.pump()
    # an injected generator is asked for uniform() as before
    asked = []

    class Rng(random.Random):
        def uniform(self, a, b):
            asked.append((a, b))
            return 0.25

    p.b._rng = Rng()
    p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"req"))
    p.net.pump()
    now = p.clock.seconds()
    p.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"resp"))
    assert asked == [(0, CFG.rekey_timeout_jitter)]
    assert a_on_b.timers.new_handshake == now + CFG.keepalive_timeout + CFG.rekey_timeout + 0.25
