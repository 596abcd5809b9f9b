"""Cryptokey routing table against a brute-force longest-prefix scan."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from nbgateway.wireguard.allowedips import AllowedIPs


def v4_networks():
    return st.builds(
        lambda a, p: ipaddress.ip_network((a, p), strict=False),
        st.integers(0, 2**32 - 1), st.integers(0, 32))


def v6_networks():
    return st.builds(
        lambda a, p: ipaddress.ip_network((a, p), strict=False),
        st.integers(0, 2**128 - 1), st.integers(0, 128))


def brute(entries: dict, addr):
    best, best_len = None, -1
    for net, value in entries.items():
        if net.version == addr.version and addr in net and net.prefixlen > best_len:
            best, best_len = value, net.prefixlen
    return best


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(v4_networks(), v6_networks()), st.integers(0, 5)), max_size=40),
    st.lists(st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                       st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)), max_size=40),
    st.data(),
)
def test_matches_brute_force(inserts, probes, data):
    table: AllowedIPs[int] = AllowedIPs()
    model: dict = {}
    for net, value in inserts:
        table.insert(net, value)
        model[net] = value
    # remove a random subset, as roster changes do
    for net in list(model):
        if data.draw(st.booleans()):
            table.remove(net)
            del model[net]
    # probe also inside inserted networks so hits are common
    probes = probes + [net.network_address for net in model]
    for addr in probes:
        assert table.lookup(addr) == brute(model, addr)
        assert table.lookup_packed(addr.packed) == brute(model, addr)


def test_prefix_moves_between_values():
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("10.0.0.0/24", "a")
    t.insert("10.0.0.0/24", "b")
    assert t.lookup("10.0.0.9") == "b"
    assert t.networks_of("a") == ()
    t.remove_value("b")
    assert t.lookup("10.0.0.9") is None and len(t) == 0


def test_bad_packed_length():
    assert AllowedIPs().lookup_packed(b"\x01\x02\x03") is None


class _Owner:
    """A value carrying its own reverse index (as a device Peer does)."""

    __slots__ = ("allowed_ips", "name")

    def __init__(self, name: int) -> None:
        self.name = name
        self.allowed_ips: tuple = ()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(v4_networks(), v6_networks()), st.integers(0, 5)), max_size=40),
    st.data(),
)
def test_reverse_index_on_the_value_matches_the_dict_index(inserts, data):
    """``reverse_attr`` keeps each value's networks on the value itself; every
    answer (lookups, moves, networks_of, removal, iteration) is the dict
    index's."""
    owners = {i: _Owner(i) for i in range(6)}
    by_dict: AllowedIPs[int] = AllowedIPs()
    by_attr: AllowedIPs[_Owner] = AllowedIPs(reverse_attr="allowed_ips")
    for net, value in inserts:
        prev_d = by_dict.insert(net, value)
        prev_a = by_attr.insert(net, owners[value])
        assert (prev_a.name if prev_a is not None else None) == prev_d
    for net, _ in inserts:
        if data.draw(st.booleans()):
            by_dict.remove(net)
            by_attr.remove(net)
    for i in range(6):
        if data.draw(st.integers(0, 5)) == 0:
            by_dict.remove_value(i)
            by_attr.remove_value(owners[i])
    assert len(by_dict) == len(by_attr)
    for i, owner in owners.items():
        assert owner.allowed_ips == by_dict.networks_of(i) == by_attr.networks_of(owner)
    assert sorted((str(n), v) for n, v in by_dict) == sorted(
        (str(n), v.name) for n, v in by_attr)
    for net, _ in inserts:
        addr = net.network_address
        hit_d, hit_a = by_dict.lookup(addr), by_attr.lookup(addr)
        assert (hit_a.name if hit_a is not None else None) == hit_d


def test_device_peers_allowed_ips_follow_moves():
    from twisted.internet.task import Clock

    from nbgateway.wireguard.device import WireGuardDevice
    from nbgateway.wireguard.keys import generate_private_key, public_key

    dev = WireGuardDevice(generate_private_key(), Clock())
    ka, kb = (public_key(generate_private_key()) for _ in range(2))
    a = dev.add_peer(ka, allowed_ips=["10.0.0.1/32", "fd00::1/128"])
    b = dev.add_peer(kb, allowed_ips=["10.0.0.2/32"])
    assert [str(n) for n in a.allowed_ips] == ["10.0.0.1/32", "fd00::1/128"]
    dev.update_peer(kb, allowed_ips=["10.0.0.2/32", "10.0.0.1/32"])  # b takes a's IPv4
    assert [str(n) for n in a.allowed_ips] == ["fd00::1/128"]
    assert [str(n) for n in b.allowed_ips] == ["10.0.0.2/32", "10.0.0.1/32"]
    assert dev.allowed_ips.lookup("10.0.0.1") is b
    dev.remove_peer(kb)
    assert b.allowed_ips == () and dev.allowed_ips.lookup("10.0.0.1") is None
    assert dev.allowed_ips.lookup("fd00::1") is a and len(dev.allowed_ips) == 1
    assert not dev.allowed_ips._by_value  # the index lives on the peers


def test_device_peer_shares_the_callers_prefix_tuple():
    from twisted.internet.task import Clock

    from nbgateway.netstack.prefix import Prefix
    from nbgateway.wireguard.device import WireGuardDevice
    from nbgateway.wireguard.keys import generate_private_key, public_key

    dev = WireGuardDevice(generate_private_key(), Clock())
    nets = (Prefix.parse("100.64.0.7/32"), Prefix.parse("fd00::7/128"))
    peer = dev.add_peer(public_key(generate_private_key()), allowed_ips=nets)
    assert peer.allowed_ips is nets
    assert dev.allowed_ips.lookup("100.64.0.7") is peer
    # a tuple naming a prefix twice is not shared, the table's own tuple is kept
    twice = (nets[0], nets[0])
    other = dev.add_peer(public_key(generate_private_key()), allowed_ips=twice)
    assert other.allowed_ips == (nets[0],) and peer.allowed_ips == (nets[1],)


def _near_hosts():
    """Host prefixes (/32, /128) and wider prefixes over a small address range,
    so that hosts, their covering networks, moves and removals collide."""
    v4 = st.builds(lambda a, p: ipaddress.ip_network((0x64400000 + a, p), strict=False),
                   st.integers(0, 63), st.sampled_from([32, 32, 32, 31, 30, 26, 24, 10]))
    v6 = st.builds(lambda a, p: ipaddress.ip_network(((0xFD << 120) + a, p), strict=False),
                   st.integers(0, 63), st.sampled_from([128, 128, 128, 127, 126, 120, 64, 8]))
    return st.one_of(v4, v6)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_near_hosts(), st.integers(0, 5)), max_size=60), st.data())
def test_host_table_keyed_by_prefix_objects_matches_brute_force(inserts, data):
    """The /32 and /128 tables are keyed by the prefix objects themselves: the
    same answers as a brute-force scan, through moves and removals; the keys
    are the objects handed in (no key int per host) and iteration yields
    them as they are."""
    from nbgateway.netstack.prefix import Prefix

    table: AllowedIPs[int] = AllowedIPs()
    model: dict = {}
    handed: dict[Prefix, Prefix] = {}
    for net, value in inserts:
        p = Prefix.from_network(net)
        table.insert(p, value)
        model[net] = value
        handed.setdefault(p, p)
    for net in list(model):
        if data.draw(st.booleans()):
            table.remove(net)  # text/ipaddress form: converted, found by value
            del model[net]
    base4, base6 = 0x64400000, 0xFD << 120
    probes = ([ipaddress.IPv4Address(base4 + i) for i in range(-2, 70)]
              + [ipaddress.IPv6Address(base6 + i) for i in range(-2, 70)])
    for addr in probes:
        assert table.lookup(addr) == brute(model, addr)
        assert table.lookup_packed(addr.packed) == brute(model, addr)
    for fam in (table._v4, table._v6):
        if fam.host is not None:
            assert all(type(k) is Prefix and k is handed[k] for k in fam.host)
    got = dict(table)
    assert {str(k) for k in got} == {str(n) for n in model}
    assert all(got[Prefix.from_network(n)] == v for n, v in model.items())


def test_lookup_by_string_equals_lookup_by_address():
    """``lookup`` of an address string (memoised parse) answers as the parsed
    address does, v4 and v6, repeatedly; an invalid string raises every time."""
    import pytest

    t: AllowedIPs[str] = AllowedIPs()
    t.insert(ipaddress.ip_network("100.64.0.0/16"), "net")
    t.insert(ipaddress.ip_network("100.64.1.7/32"), "host")
    t.insert(ipaddress.ip_network("fd00::/64"), "v6")
    for _ in range(3):
        for s in ("100.64.1.7", "100.64.2.1", "10.0.0.1", "fd00::5", "fd01::1"):
            assert t.lookup(s) == t.lookup(ipaddress.ip_address(s))
        assert t.lookup("100.64.1.7") == "host"
        assert t.lookup("fd00::5") == "v6"
        assert t.lookup("10.0.0.1") is None
        for bad in ("", "100.64.1", "not an address", "100.64.1.7%eth0x"):
            with pytest.raises(ValueError):
                t.lookup(bad)
