"""Every timer transition of the device, driven by task.Clock."""

from __future__ import annotations

import itertools

from nbgateway.wireguard.testing import ipv4_packet
from nbgateway.wireguard.timers import TimerConfig

from .conftest import B_ADDR, make_pair

CFG = TimerConfig()


def ping_a_to_b(p, payload=b"ping"):
    p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", payload))


def test_single_delayed_call_per_device(pair):
    for _ in range(50):
        ping_a_to_b(pair)
        pair.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"pong"))
        pair.run(1.0)
        assert len(pair.clock.getDelayedCalls()) <= 2
    assert pair.a.next_deadline() is not None


def test_retransmit_with_jitter_then_give_up(pair):
    pair.net.devices.pop(B_ADDR)  # b is unreachable
    ping_a_to_b(pair)
    sent_at = []
    last = 0
    for _ in range(int(CFG.rekey_attempt_time * 20) + 400):
        pair.clock.advance(0.05)
        n = pair.a.counters["handshake_initiation_tx"]
        if n != last:
            sent_at.append(pair.clock.seconds())
            last = n
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert gaps and all(CFG.rekey_timeout - 0.06 <= g <= CFG.rekey_timeout + 0.334 + 0.06
                        for g in gaps[:-1])
    # 1 initial + MAX attempts retries, then silence
    assert pair.a.counters["handshake_initiation_tx"] == 1 + CFG.max_handshake_attempts
    assert pair.a.counters["handshake_gave_up"] == 1
    assert not pair.a.peers[pair.b.public_key].staged


def test_keepalive_after_receiving_data_without_reply(pair):
    ping_a_to_b(pair)
    pair.net.pump()
    before = pair.b.counters["keepalive_tx"]
    pair.run(CFG.keepalive_timeout - 0.5)
    assert pair.b.counters["keepalive_tx"] == before
    pair.run(1.0)
    assert pair.b.counters["keepalive_tx"] == before + 1
    assert pair.a.counters["keepalive_rx"] >= 1


def test_no_keepalive_when_reply_sent(pair):
    ping_a_to_b(pair)
    pair.net.pump()
    base = pair.b.counters["keepalive_tx"]
    pair.run(1.0)
    pair.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"reply"))
    pair.run(CFG.keepalive_timeout + 1)
    assert pair.b.counters["keepalive_tx"] == base


def test_new_handshake_when_data_gets_no_answer(pair):
    ping_a_to_b(pair)
    pair.net.pump()
    # from now on nothing from b reaches a
    pair.net.filter = lambda src, dst, d: [] if src == B_ADDR else [d]
    pair.run(1.0)
    ping_a_to_b(pair)
    before = pair.a.counters["handshake_initiation_tx"]
    pair.run(CFG.keepalive_timeout + CFG.rekey_timeout + 0.5)
    assert pair.a.counters["handshake_no_reply"] == 1
    assert pair.a.counters["handshake_initiation_tx"] > before


def test_rekey_after_time_by_initiator_without_loss(pair):
    got = 0
    for i in range(int(CFG.rekey_after_time * 3)):
        ping_a_to_b(pair, i.to_bytes(4, "big"))
        pair.run(1.0)
        got = len(pair.sink_b.packets)
        assert got == i + 1, f"lost packet {i}"
    assert pair.a.counters["handshake_completed"] >= 3
    assert pair.b.counters["drop_expired"] == 0


def test_initiator_rekeys_on_receive_near_reject(pair):
    ping_a_to_b(pair)
    pair.net.pump()
    # only b sends from now on; a (initiator) must rekey before the session dies
    for i in range(int(CFG.reject_after_time) + 20):
        pair.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", i.to_bytes(4, "big")))
        pair.run(1.0)
    assert pair.a.counters["handshake_completed"] >= 2
    assert len(pair.sink_a.packets) == int(CFG.reject_after_time) + 20


def test_reject_after_time_stages_and_rehandshakes(pair):
    ping_a_to_b(pair)
    pair.net.pump()
    # freeze all traffic for longer than REJECT_AFTER_TIME
    pair.net.filter = lambda src, dst, d: []
    pair.run(CFG.reject_after_time + 1, step=1.0)
    pair.net.filter = None
    before = pair.a.counters["handshake_completed"]
    pair.a.peers[pair.b.public_key].last_initiation_sent = None
    ping_a_to_b(pair, b"late")
    pair.net.pump()
    assert pair.a.counters["handshake_completed"] == before + 1
    assert pair.sink_b.packets[-1][0].endswith(b"late")


def test_zero_key_material_after_three_reject_times(pair):
    ping_a_to_b(pair)
    pair.net.pump()
    pair.net.filter = lambda src, dst, d: []
    peer = pair.a.peers[pair.b.public_key]
    pair.run(CFG.reject_after_time * 3 + 5, step=5.0)
    assert peer.current is None and peer.previous is None and peer.next is None
    assert not any(v[0] is peer for v in pair.a._indices.values() if v[1] is not None)


def test_persistent_keepalive():
    p = make_pair()
    p.a.update_peer(p.b.public_key, persistent_keepalive=25)
    ping_a_to_b(p)
    p.net.pump()
    base = p.a.counters["keepalive_tx"]
    p.run(100, step=0.5)
    sent = p.a.counters["keepalive_tx"] - base
    assert 3 <= sent <= 5


def test_scaled_timers():
    cfg = TimerConfig().scaled(0.02)
    assert cfg.rekey_after_time == CFG.rekey_after_time * 0.02
    assert cfg.max_handshake_attempts == CFG.max_handshake_attempts
    p = make_pair(timers=cfg)
    for i in range(60):
        ping_a_to_b(p, i.to_bytes(4, "big"))
        p.run(0.25)
    assert len(p.sink_b.packets) == 60
    assert p.a.counters["handshake_completed"] >= 5
