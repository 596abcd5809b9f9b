"""ZoneAuthority answering rules (pure)."""

from __future__ import annotations

from twisted.names import dns

from nbgateway.dns import zone as zone_mod
from nbgateway.dns.zone import ZoneAuthority, service_zones
from nbgateway.mgmt.netmap import DnsRecord, DnsZone

SYNTH = DnsZone("eu.proxy.netbird.io.", (
    DnsRecord("myapp.eu.proxy.netbird.io.", 1, 5, "100.64.0.99"),
    DnsRecord("myapp.eu.proxy.netbird.io.", 1, 5, "100.64.0.98"),
), authoritative=False)
PEERS = DnsZone("netbird.test.", (
    DnsRecord("laptop.netbird.test.", 1, 300, "100.64.0.10"),
    DnsRecord("laptop.netbird.test.", 28, 300, "fd00::10"),
    DnsRecord("a.b.netbird.test.", 1, 60, "100.64.0.11"),
))


def payloads(ans):
    return [(str(rr.name), rr.type, rr.ttl, rr.payload.dottedQuad() if rr.type == dns.A
             else rr.payload._address if rr.type == dns.AAAA else None) for rr in ans.answers]


def test_a_records_with_ttl_case_insensitive():
    z = ZoneAuthority([SYNTH, PEERS])
    ans = z.lookup(b"MyApp.EU.proxy.netbird.io", dns.A)
    assert ans.rcode == dns.OK and ans.authoritative and ans.authority == ()
    assert [(n, t, ttl) for n, t, ttl, _ in payloads(ans)] == [
        ("myapp.eu.proxy.netbird.io", dns.A, 5)] * 2
    assert {rr.payload.dottedQuad() for rr in ans.answers} == {"100.64.0.99", "100.64.0.98"}
    assert z.lookup("laptop.netbird.test.", dns.A).answers[0].ttl == 300


def test_aaaa_and_any():
    z = ZoneAuthority([PEERS])
    ans = z.lookup(b"laptop.netbird.test", dns.AAAA)
    assert [rr.type for rr in ans.answers] == [dns.AAAA]
    assert ans.answers[0].payload.address == dns.Record_AAAA("fd00::10").address
    assert [rr.type for rr in z.lookup(b"laptop.netbird.test", dns.ALL_RECORDS).answers] == [
        dns.A, dns.AAAA]


def test_nodata_has_soa_and_nxdomain_in_authoritative_zone():
    z = ZoneAuthority([SYNTH, PEERS])
    nodata = z.lookup(b"myapp.eu.proxy.netbird.io", dns.AAAA)
    assert (nodata.rcode, nodata.answers) == (dns.OK, ())
    assert [rr.type for rr in nodata.authority] == [dns.SOA]
    assert nodata.authority[0].payload.minimum == zone_mod.NEGATIVE_TTL
    ent = z.lookup(b"b.netbird.test", dns.A)  # empty non-terminal: exists, no data
    assert (ent.rcode, ent.answers, len(ent.authority)) == (dns.OK, (), 1)
    nx = z.lookup(b"nope.netbird.test", dns.A)
    assert nx.rcode == dns.ENAME and nx.authoritative and nx.authority[0].type == dns.SOA
    soa = z.lookup(b"netbird.test", dns.SOA)
    assert [rr.type for rr in soa.answers] == [dns.SOA]
    mx = z.lookup(b"laptop.netbird.test", dns.MX)
    assert mx.rcode == dns.OK and mx.answers == ()


def test_refused_outside_zone_unknown_in_match_only_zone_and_other_class():
    z = ZoneAuthority([SYNTH, PEERS])
    assert z.lookup(b"example.com", dns.A).rcode == dns.EREFUSED
    assert z.lookup(b"proxy.netbird.io", dns.A).rcode == dns.EREFUSED
    assert z.lookup(b"other.eu.proxy.netbird.io", dns.A).rcode == dns.EREFUSED
    assert z.lookup(b"laptop.netbird.test", dns.A, dns.CH).rcode == dns.EREFUSED
    assert z.lookup(b"", dns.A).rcode == dns.EREFUSED
    assert z.lookup(b"\xff.netbird.test", dns.A).rcode == dns.EREFUSED
    assert ZoneAuthority().lookup(b"laptop.netbird.test", dns.A).rcode == dns.EREFUSED


def test_longest_apex_wins_and_service_zones():
    zones = (*service_zones(["App.eu.proxy.netbird.io", "*.wild.test", "bad..name"],
                            ["100.64.0.99", "fd00::99", "junk"]), SYNTH)
    z = ZoneAuthority(zones)
    assert set(z.apexes) == {"app.eu.proxy.netbird.io.", "eu.proxy.netbird.io."}
    a = z.lookup(b"app.eu.proxy.netbird.io", dns.A)
    assert [rr.payload.dottedQuad() for rr in a.answers] == ["100.64.0.99"]
    assert len(z.lookup(b"app.eu.proxy.netbird.io", dns.AAAA).answers) == 1
    assert z.lookup(b"x.app.eu.proxy.netbird.io", dns.A).rcode == dns.ENAME
    assert z.lookup(b"myapp.eu.proxy.netbird.io", dns.A).rcode == dns.OK


def test_replace_is_atomic_and_bumps_serial():
    z = ZoneAuthority([PEERS], serial=7)
    assert z.lookup(b"netbird.test", dns.SOA).answers[0].payload.serial == 7
    before = z.lookup(b"laptop.netbird.test", dns.A)
    z.replace([SYNTH])
    assert z.serial == 8 and z.apexes == ("eu.proxy.netbird.io.",)
    assert z.lookup(b"laptop.netbird.test", dns.A).rcode == dns.EREFUSED
    assert before.answers  # answers already handed out are unaffected
    z.replace([SYNTH, PEERS], serial=100)
    assert z.lookup(b"netbird.test", dns.SOA).answers[0].payload.serial == 100


def test_bounds_and_bad_records(monkeypatch):
    monkeypatch.setattr(zone_mod, "MAX_RECORDS", 3)
    monkeypatch.setattr(zone_mod, "MAX_ZONES", 2)
    recs = tuple(DnsRecord(f"h{i}.a.test.", 1, 5, f"10.0.0.{i}") for i in range(5))
    z = ZoneAuthority([
        DnsZone("a.test.", (*recs, DnsRecord("x.other.", 1, 5, "10.0.0.1"))),
        DnsZone("b.test."), DnsZone("c.test.", recs[:1]), DnsZone("..", ()),
    ])
    assert z.apexes == ("a.test.", "b.test.")
    assert z.lookup(b"h2.a.test", dns.A).rcode == dns.OK
    assert z.lookup(b"h3.a.test", dns.A).rcode == dns.ENAME
    assert z.dropped == 2 + 1 + 2 + 1


def test_duplicate_records_and_zones_merge():
    rec = DnsRecord("x.m.test.", 1, 5, "10.0.0.1")
    z = ZoneAuthority([DnsZone("m.test.", (rec, rec), authoritative=False),
                       DnsZone("M.test", (rec,), authoritative=True)])
    assert len(z.lookup(b"x.m.test", dns.A).answers) == 1
    assert z.lookup(b"y.m.test", dns.A).rcode == dns.ENAME  # merged zone is authoritative
