"""Hypothesis fuzzing of the datagram entry point: random, truncated and
bit-flipped messages never raise, never change state, never deliver."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbgateway.wireguard.testing import ipv4_packet

from .conftest import A_ADDR, B_ADDR, make_pair


def _established():
    p = make_pair()
    p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"seed"))
    p.net.pump()
    p.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"seed-back"))
    p.net.pump()
    originals = [d for _, dst, d in p.net.delivered if dst == B_ADDR]
    originals += [d for _, dst, d in p.net.delivered if dst == A_ADDR]
    # a cookie reply shape too
    originals.append(b"\x03\x00\x00\x00" + bytes(60))
    return p, originals


PAIR, ORIGINALS = _established()


def snapshot(dev):
    peers = {
        k: (p.endpoint, id(p.current), id(p.next), id(p.previous), p.latest_timestamp,
            p.rx_bytes, p.current.replay.last if p.current else None)
        for k, p in dev.peers.items()
    }
    return peers, set(dev._indices), dev.counters["handshake_completed"]


def mutated():
    def flip(data, positions):
        b = bytearray(data)
        for pos in positions:
            b[pos % len(b)] ^= 1 << (pos % 8)
        return bytes(b)

    base = st.sampled_from(ORIGINALS)
    flipped = st.builds(flip, base, st.lists(st.integers(0, 10_000), min_size=1, max_size=8))
    truncated = st.builds(lambda d, n: d[: n % len(d)], base, st.integers(0, 10_000))
    extended = st.builds(lambda d, e: d + e, base, st.binary(min_size=1, max_size=64))
    typed = st.builds(
        lambda t, body: bytes([t, 0, 0, 0]) + body,
        st.integers(0, 255), st.binary(max_size=200))
    return st.one_of(st.binary(max_size=300), flipped, truncated, extended, typed)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(mutated(), min_size=1, max_size=20))
def test_garbage_never_raises_or_changes_state(datagrams):
    p = PAIR
    before_a, before_b = snapshot(p.a), snapshot(p.b)
    delivered_a, delivered_b = len(p.sink_a.packets), len(p.sink_b.packets)
    for d in datagrams:
        p.b.datagramReceived(d, ("203.0.113.9", 4444))
        p.a.datagramReceived(d, ("203.0.113.9", 4444))
    p.net.queue.clear()  # discard any cookie replies / responses sent to the fuzzer
    assert p.a.counters["drop_internal_error"] == 0
    assert p.b.counters["drop_internal_error"] == 0
    assert snapshot(p.a) == before_a
    assert snapshot(p.b) == before_b
    assert len(p.sink_a.packets) == delivered_a and len(p.sink_b.packets) == delivered_b


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(mutated(), min_size=1, max_size=40))
def test_garbage_read_as_one_batch_never_raises_or_changes_state(datagrams):
    """The same, delivered as socket reads (datagramsReceived): a run cut short
    by garbage or a malformed control message neither raises nor leaks state."""
    p = PAIR
    before_a, before_b = snapshot(p.a), snapshot(p.b)
    delivered_a, delivered_b = len(p.sink_a.packets), len(p.sink_b.packets)
    batch = [(d, ("203.0.113.9", 4444)) for d in datagrams]
    p.b.datagramsReceived(batch)
    p.a.datagramsReceived(batch)
    p.net.queue.clear()
    assert p.a.counters["drop_internal_error"] == 0
    assert p.b.counters["drop_internal_error"] == 0
    assert snapshot(p.a) == before_a
    assert snapshot(p.b) == before_b
    assert len(p.sink_a.packets) == delivered_a and len(p.sink_b.packets) == delivered_b


def test_memory_bounded_under_initiation_flood():
    """Thousands of distinct, valid-MAC1 initiations from an unknown key create no
    state: no indices, no peers, heap unchanged."""
    from nbgateway.wireguard.device import WireGuardDevice
    from nbgateway.wireguard.keys import generate_private_key

    p = make_pair()
    stranger = WireGuardDevice(generate_private_key(), p.clock)
    p.net.attach(stranger, ("203.0.113.50", 1))
    stranger.add_peer(p.b.public_key, endpoint=B_ADDR)
    heap_before = len(p.b._heap)
    for _ in range(300):
        stranger.peers[p.b.public_key].last_initiation_sent = None
        stranger.initiate(p.b.public_key)
        p.net.pump()
    assert (p.b.counters["drop_unknown_peer"] + p.b.counters["cookie_reply_tx"]
            + p.b.counters["drop_source_rate"]) == 300
    # under load one source address gets a burst and then 20 per second
    assert p.b.counters["drop_unknown_peer"] < 300 - p.b.counters["cookie_reply_tx"]
    assert not p.b._indices
    assert len(p.b._heap) == heap_before
