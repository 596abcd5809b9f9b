"""The transport path of a request/response peer: every send after a receive
stays on the inline (batched) path and arms the new-handshake timer there,
with the same deadline and jitter as before; the timer still starts a
handshake when replies stop (task.Clock)."""

from __future__ import annotations

from nbgateway.wireguard.testing import ipv4_packet
from nbgateway.wireguard.timers import TimerConfig

from .conftest import A_ADDR, make_pair

CFG = TimerConfig()


def _count_slow_sends(device) -> list[int]:
    calls = [0]
    orig = device._send_data

    def counted(peer, packet):
        calls[0] += 1
        return orig(peer, packet)

    device._send_data = counted
    return calls


def test_replies_use_the_inline_path_and_arm_the_new_handshake_timer():
    p = make_pair()
    p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"req"))
    p.net.pump()  # handshake, first request
    p.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"resp"))
    p.net.pump()
    slow_b = _count_slow_sends(p.b)
    a_on_b = p.b.peers[p.a.public_key]
    for i in range(30):
        p.clock.advance(0.001)
        p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"req %d" % i))
        p.net.pump()
        assert a_on_b.timers.new_handshake is None  # a packet arrived: cancelled
        p.clock.advance(0.0005)
        now = p.clock.seconds()
        assert p.b.sendPackets([ipv4_packet("10.0.0.2", "10.0.0.1", b"resp %d" % i)]) == 1
        base = now + CFG.keepalive_timeout + CFG.rekey_timeout
        assert base <= a_on_b.timers.new_handshake <= base + CFG.rekey_timeout_jitter
        p.net.pump()
    assert slow_b[0] == 0
    assert [pkt[20:] for pkt, _ in p.sink_a.packets[-3:]] == [
        b"resp 27", b"resp 28", b"resp 29"]
    assert p.b.counters["handshake_no_reply"] == 0


def test_new_handshake_when_inline_replies_get_no_answer():
    p = make_pair()
    p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"req"))
    p.net.pump()
    p.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"resp"))
    p.net.pump()
    p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"req 2"))
    p.net.pump()
    # from now on nothing from a reaches b
    p.net.filter = lambda src, dst, d: [] if src == A_ADDR else [d]
    slow_b = _count_slow_sends(p.b)
    p.b.sendPackets([ipv4_packet("10.0.0.2", "10.0.0.1", b"resp 2")])
    assert slow_b[0] == 0
    before = p.b.counters["handshake_initiation_tx"]
    p.run(CFG.keepalive_timeout + CFG.rekey_timeout - 0.5)
    assert p.b.counters["handshake_no_reply"] == 0
    p.run(CFG.rekey_timeout_jitter + 1.0)
    assert p.b.counters["handshake_no_reply"] == 1
    assert p.b.counters["handshake_initiation_tx"] > before


def test_the_lone_send_arms_the_timer_with_the_shared_jitter(monkeypatch):
    """With the device's default generator (SystemRandom) the lone-packet send
    arms the new-handshake timer itself: now + keepalive + rekey timeout +
    the shared generator's draw times the jitter bound; the peer's heap entry
    moves only for an earlier deadline; and the timer still starts a
    handshake when replies stop."""
    import random

    from nbgateway.wireguard import datapath

    p = make_pair()
    p.b._rng = random.SystemRandom()  # the default (make_pair injects a seeded one)
    draws = iter([0.25, 0.5, 0.75] + [0.0] * 10)
    monkeypatch.setattr(datapath, "_JITTER_RANDOM_RANDOM", lambda: next(draws))
    arms = []
    orig_arm = p.b._arm

    def arm(peer, name, when):
        arms.append((name, when))
        return orig_arm(peer, name, when)

    p.b._arm = arm
    p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"req"))
    p.net.pump()
    slow_b = _count_slow_sends(p.b)
    a_on_b = p.b.peers[p.a.public_key]
    for i, draw in enumerate((0.25, 0.5)):
        if i:
            p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"req %d" % i))
            p.net.pump()
        assert a_on_b.timers.new_handshake is None
        p.clock.advance(0.001)
        arms.clear()
        now = p.clock.seconds()
        assert p.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"resp %d" % i))
        when = now + CFG.keepalive_timeout + CFG.rekey_timeout + draw * CFG.rekey_timeout_jitter
        assert a_on_b.timers.new_handshake == when
        # the receive armed the keepalive (10 s) before it: no heap move for 15 s
        assert a_on_b.timers.heap_at < when and arms == []
        p.net.pump()
    # a deadline before the queued one moves the heap entry
    a_on_b.timers.new_handshake = None
    a_on_b.timers.heap_at = None
    now = p.clock.seconds()
    assert p.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"resp x"))
    when = now + CFG.keepalive_timeout + CFG.rekey_timeout + 0.75 * CFG.rekey_timeout_jitter
    assert arms == [("new_handshake", when)]
    assert slow_b[0] == 0
    # nothing from a reaches b any more: the timer starts a handshake
    p.net.filter = lambda src, dst, d: [] if src == A_ADDR else [d]
    before = p.b.counters["handshake_initiation_tx"]
    p.run(CFG.keepalive_timeout + CFG.rekey_timeout + CFG.rekey_timeout_jitter + 1.0)
    assert p.b.counters["handshake_no_reply"] == 1
    assert p.b.counters["handshake_initiation_tx"] > before
