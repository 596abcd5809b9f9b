"""WireGuardDevice behaviour between two in-memory instances."""

from __future__ import annotations

import pytest

from nbgateway.netstack.prefix import Prefix
from nbgateway.wireguard.keys import generate_private_key, public_key
from nbgateway.wireguard.testing import ipv4_packet, ipv6_packet

from .conftest import A_ADDR, B_ADDR, make_pair


def test_handshake_and_data_both_directions(pair):
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2", b"hello")
    assert pair.a.sendPacket(pkt)
    pair.net.pump()
    assert pair.sink_b.packets == [(pkt, pair.a.public_key)]
    back = ipv6_packet("fd00::2", "fd00::1", b"world!")
    assert pair.b.sendPacket(back)
    pair.net.pump()
    assert pair.sink_a.packets == [(back, pair.b.public_key)]
    assert pair.a.counters["handshake_completed"] == 1
    assert pair.b.counters["handshake_completed"] == 1
    peer_b = pair.a.peers[pair.b.public_key]
    assert peer_b.last_handshake == pair.clock.seconds()
    assert peer_b.tx_bytes > 0 and peer_b.rx_bytes > 0


def test_message_sizes_on_the_wire(pair):
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"x" * 5))
    pair.net.pump()
    sizes = [len(d) for _, _, d in pair.net.delivered]
    assert sizes[0] == 148  # initiation
    assert sizes[1] == 92  # response
    # transport: 16 header + payload padded to 16 + 16 tag (IPv4 25 bytes -> 32)
    assert sizes[2] == 16 + 32 + 16
    assert all((s - 32) % 16 == 0 for s in sizes[2:])


def test_padding_is_stripped_using_ip_length(pair):
    pkt = ipv4_packet("10.0.0.1", "10.0.0.2", b"abc")
    pair.a.sendPacket(pkt)
    pair.net.pump()
    assert pair.sink_b.packets[0][0] == pkt


def test_preshared_key_pair_works():
    p = make_pair(psk=b"\x42" * 32)
    p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"psk"))
    p.net.pump()
    assert len(p.sink_b.packets) == 1


def test_preshared_key_mismatch_never_completes(pair):
    pair.b.update_peer(pair.a.public_key, preshared_key=b"\x01" * 32)
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    pair.net.pump()
    assert pair.a.counters["drop_decrypt"] == 1  # response fails to authenticate
    assert pair.sink_b.packets == []


def test_disallowed_inner_source_dropped(pair):
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    pair.net.pump()
    # a's device routes by destination; the inner source 10.9.9.9 is not a's allowed IP at b
    pair.a.sendPacket(ipv4_packet("10.9.9.9", "10.0.0.2"))
    pair.net.pump()
    assert pair.b.counters["drop_disallowed_source"] == 1
    assert len(pair.sink_b.packets) == 1


def test_replayed_transport_dropped(pair):
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    pair.net.pump()
    data = [d for _, dst, d in pair.net.delivered if dst == B_ADDR and d[0] == 4][-1]
    pair.b.datagramReceived(data, A_ADDR)
    assert pair.b.counters["drop_replay"] == 1
    assert len(pair.sink_b.packets) == 1


def test_unknown_index_and_garbage_counted(pair):
    pair.b.datagramReceived(b"\x04\x00\x00\x00" + b"\x00" * 28, A_ADDR)
    pair.b.datagramReceived(b"\x01", A_ADDR)
    pair.b.datagramReceived(b"\x07\x00\x00\x00" + bytes(100), A_ADDR)
    assert pair.b.counters["drop_unknown_index"] == 1
    assert pair.b.counters["drop_malformed"] == 2


def test_peer_not_in_roster_dropped(pair):
    pair.b.remove_peer(pair.a.public_key)
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    pair.net.pump()
    assert pair.b.counters["drop_unknown_peer"] == 1
    assert pair.b.counters["handshake_response_tx"] == 0


def test_bad_mac1_dropped(pair):
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    init = bytearray(pair.net.queue[0][2])
    pair.net.queue.clear()
    init[120] ^= 1
    pair.b.datagramReceived(bytes(init), A_ADDR)
    assert pair.b.counters["drop_bad_mac1"] == 1


def test_replayed_initiation_dropped_by_timestamp(pair):
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    init = pair.net.queue[0][2]
    pair.net.pump()
    pair.clock.advance(1)
    pair.b.datagramReceived(init, A_ADDR)
    assert pair.b.counters["drop_stale_timestamp"] == 1
    assert pair.b.counters["handshake_response_tx"] == 1


def test_roaming_updates_endpoint(pair):
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    pair.net.pump()
    new_addr = ("198.51.100.7", 40000)
    pair.net.move(pair.a, new_addr)
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"from new place"))
    pair.net.pump()
    assert pair.b.peers[pair.a.public_key].endpoint == new_addr
    pair.b.sendPacket(ipv4_packet("10.0.0.2", "10.0.0.1", b"reply"))
    pair.net.pump()
    assert pair.sink_a.packets[-1][0].endswith(b"reply")


def test_unauthenticated_packet_does_not_roam(pair):
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    pair.net.pump()
    data = bytearray([d for _, dst, d in pair.net.delivered if dst == B_ADDR and d[0] == 4][-1])
    data[-1] ^= 0xFF
    data[8] += 1  # fresh counter, bad tag
    pair.b.datagramReceived(bytes(data), ("203.0.113.66", 1))
    assert pair.b.counters["drop_decrypt"] == 1
    assert pair.b.peers[pair.a.public_key].endpoint == A_ADDR


def test_no_route_and_oversize(pair):
    assert not pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.7.7.7"))
    assert pair.a.counters["drop_no_route"] == 1
    assert not pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"x" * 2000))
    assert pair.a.counters["drop_oversize"] == 1


def test_staged_packets_bounded_and_flushed(pair):
    for i in range(500):
        pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", i.to_bytes(2, "big")))
    peer = pair.a.peers[pair.b.public_key]
    assert len(peer.staged) == 128
    pair.net.pump()
    assert len(pair.sink_b.packets) == 128
    assert pair.sink_b.packets[-1][0].endswith((499).to_bytes(2, "big"))


def test_runtime_roster_changes(pair):
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    pair.net.pump()
    # move b's allowed IP on a to a brand-new peer: routing follows
    other = public_key(generate_private_key())
    pair.a.add_peer(other, allowed_ips=["10.0.0.2/32"], endpoint=("192.0.2.99", 1))
    assert pair.a.peers[pair.b.public_key].allowed_ips == (
        Prefix.parse("fd00::2/128"),)
    pair.a.remove_peer(other)
    assert not pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    pair.a.update_peer(pair.b.public_key, allowed_ips=["10.0.0.0/24"])
    assert pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"again"))
    pair.net.pump()
    assert pair.sink_b.packets[-1][0].endswith(b"again")


def test_cannot_add_self(pair):
    with pytest.raises(ValueError):
        pair.a.add_peer(pair.a.public_key)


def test_removed_peer_indices_released(pair):
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    pair.net.pump()
    assert pair.b._indices
    pair.b.remove_peer(pair.a.public_key)
    assert not pair.b._indices


def test_handshake_flood_switches_on_cookies():
    p = make_pair(under_load_threshold=5)
    init_datagrams = []
    for _ in range(10):
        p.a.peers[p.b.public_key].last_initiation_sent = None
        p.a.initiate(p.b.public_key)
        init_datagrams.append(p.net.queue.pop()[2])
        p.net.queue.clear()
    for d in init_datagrams:
        p.b.datagramReceived(d, A_ADDR)
    assert p.b.counters["cookie_reply_tx"] >= 5
    # the initiator consumes the cookie reply; its next initiation carries mac2
    p.net.queue.clear()
    p.a.peers[p.b.public_key].last_initiation_sent = None
    p.a.initiate(p.b.public_key)
    p.net.pump()  # b (still under load) replies with a cookie
    assert p.a.counters["cookie_reply_rx"] >= 1
    p.clock.advance(0.2)
    p.a.peers[p.b.public_key].last_initiation_sent = None
    p.a.initiate(p.b.public_key)
    p.net.pump()
    assert p.a.counters["handshake_completed"] == 1


def test_close_stops_timers(pair):
    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2"))
    pair.net.pump()
    assert pair.clock.getDelayedCalls()
    pair.a.close()
    pair.b.close()
    assert not pair.clock.getDelayedCalls()
    pair.a.datagramReceived(b"\x04" + bytes(40), B_ADDR)  # ignored, no error


def test_reordered_and_duplicated_transport_delivered_once():
    """The inlined in-order replay fast path and the general window agree: any
    order of a burst, with duplicates, delivers each packet exactly once."""
    import random

    p = make_pair()
    p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"warmup"))
    p.net.pump()
    burst = []
    p.net.filter = lambda src, dst, d: (burst.append(d), [])[1]
    for i in range(300):
        p.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", i.to_bytes(2, "big")))
    p.net.pump()
    p.net.filter = None
    rnd = random.Random(3)
    order = burst + rnd.sample(burst, 100)
    rnd.shuffle(order)
    for d in order:
        p.b.datagramReceived(d, A_ADDR)
    payloads = sorted(pkt[-2:] for pkt, _ in p.sink_b.packets[1:])
    assert payloads == sorted(i.to_bytes(2, "big") for i in range(300))
    assert p.b.counters["drop_replay"] == 100
