"""An account's zone index is built at its first read, not when replaced.

:func:`account_zones` returns a source that :meth:`ZoneAuthority.replace`
keeps as it is; the first query (or ``apexes``, ``len``, ``dropped``) builds
the index from what the source captured, so the answers are the ones an
index built at once gives, and an account nobody queries keeps no index.
"""

from __future__ import annotations

import ipaddress

import pytest
from twisted.names import dns

from nbgateway.dns import zone as zone_mod
from nbgateway.dns.zone import AccountZones, ZoneAuthority, account_zones
from nbgateway.mgmt.netmap import AccountNetwork, DnsRecord, DnsZone

APP = "app.eu.proxy.netbird.io."
PEERS = DnsZone("peers.test.", (DnsRecord("p1.peers.test.", dns.A, 300, "100.66.0.1"),
                                DnsRecord("p1.peers.test.", dns.AAAA, 300, "fd00::1"),
                                DnsRecord("x.other.test.", dns.A, 300, "100.66.0.9")))


def network(serial: int = 1, own: str = "100.64.0.99", zones=(PEERS,)) -> AccountNetwork:
    return AccountNetwork(serial=serial, address=ipaddress.ip_interface(f"{own}/10"),
                          zones=tuple(zones))


@pytest.fixture
def builds(monkeypatch) -> list[int]:
    """How many times the account's zones were made."""
    made: list[int] = []
    real = zone_mod._account_zones

    def counting(net, domains):
        made.append(net.serial)
        return real(net, domains)

    monkeypatch.setattr(zone_mod, "_account_zones", counting)
    return made


def _view(auth: ZoneAuthority, names: list[str]) -> list[tuple]:
    out = []
    for name in names:
        for qtype in (dns.A, dns.AAAA, dns.ALL_RECORDS, dns.SOA, dns.MX):
            ans = auth.lookup(name, qtype)
            out.append((name, qtype, ans.rcode, ans.authoritative,
                        [(r.name.name, r.type, r.ttl, r.payload) for r in ans.answers],
                        [(r.name.name, r.payload) for r in ans.authority]))
    return out


def test_replace_builds_nothing_until_the_first_query(builds):
    auth = ZoneAuthority()
    auth.replace(account_zones(network(), ["App.eu.proxy.netbird.io"]))
    assert builds == []
    assert auth.lookup(APP, dns.A).answers[0].payload.dottedQuad() == "100.64.0.99"
    assert builds == [1]
    auth.lookup("p1.peers.test.", dns.AAAA)
    auth.lookup("nope.peers.test.", dns.A)
    assert builds == [1]  # one index for every later query


def test_answers_equal_an_index_built_at_once(builds):
    names = [APP, "p1.peers.test.", "peers.test.", "nope.peers.test.", "x.other.test.",
             "elsewhere.example."]
    source = account_zones(network(), [APP, "bad..name", APP])
    lazy = ZoneAuthority(source, serial=7)
    eager = ZoneAuthority(tuple(source), serial=7)
    assert builds == [1]  # the tuple() above
    assert _view(lazy, names) == _view(eager, names)
    assert (lazy.apexes, len(lazy), lazy.dropped, lazy.serial) == (
        eager.apexes, len(eager), eager.dropped, eager.serial)
    assert lazy.dropped == 1  # the record outside its zone


@pytest.mark.parametrize("read", [
    lambda a: a.apexes, len, lambda a: a.dropped, lambda a: a.find_zone(APP)])
def test_every_read_builds_the_index(builds, read):
    auth = ZoneAuthority(account_zones(network(), [APP]))
    assert builds == []
    read(auth)
    assert builds == [1]
    assert set(auth.apexes) == {APP, "peers.test."}


def test_a_replaced_source_is_never_built_and_the_serial_moves_at_once(builds):
    auth = ZoneAuthority(account_zones(network(serial=1), [APP]), serial=4)
    auth.replace(account_zones(network(serial=2, own="100.64.0.98"), [APP]))
    assert auth.serial == 5 and builds == []
    ans = auth.lookup(APP, dns.A)
    assert [r.payload.dottedQuad() for r in ans.answers] == ["100.64.0.98"]
    assert builds == [2]  # the first source was dropped unbuilt
    soa = auth.lookup("nope." + APP, dns.A).authority[0]
    assert soa.payload.serial == 5


def test_a_deferred_source_replaces_a_built_index_at_once(builds):
    auth = ZoneAuthority([PEERS])
    assert auth.lookup("p1.peers.test.", dns.A).rcode == dns.OK
    auth.replace(account_zones(network(zones=()), [APP]))
    assert auth.lookup("p1.peers.test.", dns.A).rcode == dns.EREFUSED  # old zone gone
    assert auth.apexes == (APP,)
    auth.replace([])  # an eager replace drops a source not built yet
    assert auth.apexes == () and builds == [1]


def test_the_source_captures_its_inputs():
    domains = [APP]
    source = account_zones(network(), domains)
    domains.append("other.example")  # the caller's list changing later changes nothing
    assert isinstance(source, AccountZones) and source.domains == (APP,)
    assert [z.domain for z in source] == [APP, "peers.test."]
    assert list(source) == list(source)  # iterable again


def test_authorities_without_zones_share_one_read_only_index():
    a, b = ZoneAuthority(), ZoneAuthority([])
    assert a._zones is b._zones and len(a) == 0
    with pytest.raises(TypeError):
        a._zones["x."] = None  # type: ignore[index]
    assert a.lookup("x.", dns.A).rcode == dns.EREFUSED
