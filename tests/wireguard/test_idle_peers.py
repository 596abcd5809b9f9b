"""Idle peers cost nothing per second and little memory.

Timers are lazy: a roster of never-handshaken peers arms no delayed call and
no timer runs for them however long the clock advances.  A never-handshaken
peer's per-peer state (Peer with its key, endpoint, one allowed IP, routing
entries) stays under 2 KiB: the static-static DH, handshake hash, cookie state
and staging queue are created on first use."""

from __future__ import annotations

import gc
import tracemalloc

from twisted.internet.task import Clock

from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key, public_key

N = 1000


def _device(clock: Clock) -> tuple[WireGuardDevice, list[bytes]]:
    keys = [public_key(generate_private_key()) for _ in range(N)]
    return WireGuardDevice(generate_private_key(), clock), keys


def test_idle_peers_arm_no_timer_and_nothing_runs_per_second():
    clock = Clock()
    device, keys = _device(clock)
    expired = []
    original = device._expire
    device._expire = lambda peer, now: (expired.append(peer), original(peer, now))
    for i, key in enumerate(keys):
        device.add_peer(key, allowed_ips=[f"100.64.{i // 250}.{i % 250 + 1}/32"],
                        endpoint=("198.18.0.2", 51820))
    assert device.next_deadline() is None
    calls_before = len(clock.getDelayedCalls())
    for _ in range(600):  # ten idle minutes, a second at a time
        clock.advance(1)
    assert expired == []
    assert len(clock.getDelayedCalls()) == calls_before
    # a peer that asks for keepalives is the exception, and only that one runs
    device.update_peer(keys[0], persistent_keepalive=25)
    clock.advance(25)
    assert [p.public_key for p in expired] == [keys[0]]


def test_never_handshaken_peer_is_under_two_kib():
    device, keys = _device(Clock())
    ips = [f"100.64.{i // 250}.{i % 250 + 1}/32" for i in range(N)]
    device.add_peer(public_key(generate_private_key()), allowed_ips=["100.127.0.1/32"])
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for key, ip in zip(keys, ips, strict=True):
            device.add_peer(key, allowed_ips=[ip], endpoint=("198.18.0.2", 51820))
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per_peer = grown / N
    assert per_peer <= 2048, per_peer
    peer = device.peers[keys[0]]
    assert not peer.has_handshake_state and peer._staged is None
    # the defaults read without creating the state
    assert peer.handshake is None and peer.last_initiation_sent is None
    assert peer.latest_timestamp == bytes(12) and peer.preshared_key == bytes(32)
    assert not peer.has_handshake_state


def test_timer_record_is_created_by_the_first_handshake_not_by_add_or_remove():
    from nbgateway.wireguard.testing import ipv4_packet

    from .conftest import make_pair

    p = make_pair()
    b_on_a = p.a.peers[p.b.public_key]
    a_on_b = p.b.peers[p.a.public_key]
    assert not b_on_a.has_timers and not a_on_b.has_timers
    p.run(30)  # idle time creates nothing either
    assert not b_on_a.has_timers and not a_on_b.has_timers
    assert not b_on_a.has_handshake_state and not a_on_b.has_handshake_state
    p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"hello"))
    p.net.pump()
    assert b_on_a.has_timers and a_on_b.has_timers
    # the handshake created (and used) the handshake-only state on both sides
    assert b_on_a.has_handshake_state and a_on_b.has_handshake_state
    assert b_on_a.hs.static_static == a_on_b.hs.static_static and b_on_a.hs.local is None
    assert a_on_b.latest_timestamp != bytes(12)
    assert [pkt[20:] for pkt, _ in p.sink_b.packets] == [b"hello"]
    assert b_on_a.timers.new_handshake is not None  # data sent, nothing back yet
    assert a_on_b.timers.send_keepalive is not None  # data received: keepalive due
    # the protocol's timers still work from the lazily created record
    p.run(15)
    assert b_on_a.timers.send_keepalive is None and a_on_b.timers.send_keepalive is None
    # removing idle peers creates neither a timer record nor a staging queue
    p.a.add_peer(public_key(generate_private_key()), allowed_ips=["10.9.0.1/32"])
    idle = next(peer for key, peer in p.a.peers.items() if key != p.b.public_key)
    p.a.remove_peer(idle.public_key)
    assert idle.removed and not idle.has_timers and idle._staged is None
    assert not idle.has_handshake_state
    # a persistent-keepalive setting arms (and so creates) the record
    p.a.add_peer(public_key(generate_private_key()), allowed_ips=["10.9.0.2/32"],
                 endpoint=("192.0.2.9", 51820))
    ka = next(peer for key, peer in p.a.peers.items() if key != p.b.public_key)
    p.a.update_peer(ka.public_key, persistent_keepalive=25)
    assert ka.has_timers and ka.timers.persistent_keepalive is not None
