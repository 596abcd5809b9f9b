"""An idle zone holds compact values, not twisted.names records; answers are
built per lookup and equal what the records would have been."""

from __future__ import annotations

from twisted.names import dns

from nbgateway.dns.zone import NEGATIVE_TTL, ZoneAuthority
from nbgateway.mgmt.netmap import DnsRecord, DnsZone


def authority() -> ZoneAuthority:
    return ZoneAuthority([DnsZone("peers.test.", (
        DnsRecord("db.peers.test.", dns.A, 60, "100.64.0.7"),
        DnsRecord("db.peers.test.", dns.A, 60, "100.64.0.8"),
        DnsRecord("db.peers.test.", dns.AAAA, 60, "fd00::7"),
        # the same AAAA spelled out: one record
        DnsRecord("db.peers.test.", dns.AAAA, 60, "fd00:0:0::7"),
    ))], serial=42)


def test_idle_zone_keeps_no_record_objects():
    auth = authority()
    (zone,) = auth._zones.values()
    held = zone.names["db.peers.test."]
    assert [(r.type, r.ttl, r.address) for r in held] == [
        (dns.A, 60, "100.64.0.7"), (dns.A, 60, "100.64.0.8"), (dns.AAAA, 60, "fd00::7")]
    assert all(type(r) is DnsRecord for r in held)  # the map's values, no twisted records
    assert zone.names["peers.test."] == ()  # the apex: no records, answers NODATA


def test_a_one_record_name_holds_the_maps_record_itself():
    """Indexing a map of one record per name allocates nothing per record:
    the name maps to the map's own DnsRecord (rebuilt for every map)."""
    recs = tuple(DnsRecord(f"p{i}.peers.test.", dns.A, 300, f"100.64.0.{i}") for i in range(1, 9))
    auth = ZoneAuthority([DnsZone("peers.test.", recs)])
    (zone,) = auth._zones.values()
    assert all(zone.names[r.name] is r for r in recs)
    a = auth.lookup("p3.peers.test", dns.A)
    assert [rr.payload for rr in a.answers] == [dns.Record_A("100.64.0.3", 300)]
    assert auth.lookup("p3.peers.test", dns.AAAA).answers == ()  # NODATA
    assert auth.lookup("p9.peers.test", dns.A).rcode == dns.ENAME


def test_answers_are_the_records():
    auth = authority()
    a = auth.lookup("db.peers.test", dns.A)
    assert a.rcode == dns.OK and a.authoritative
    assert [rr.payload for rr in a.answers] == [dns.Record_A("100.64.0.7", 60),
                                                dns.Record_A("100.64.0.8", 60)]
    assert all(rr.name == dns.Name(b"db.peers.test") and rr.ttl == 60 and rr.auth
               for rr in a.answers)
    both = auth.lookup("db.peers.test", dns.ALL_RECORDS)
    assert [rr.type for rr in both.answers] == [dns.A, dns.A, dns.AAAA]
    assert both.answers[2].payload == dns.Record_AAAA("fd00::7", 60)
    # fresh objects per answer: a caller changing one cannot change the zone
    assert a.answers[0] is not auth.lookup("db.peers.test", dns.A).answers[0]


def test_soa_built_from_the_serial():
    auth = authority()
    nx = auth.lookup("nope.peers.test", dns.A)
    assert nx.rcode == dns.ENAME
    (soa,) = nx.authority
    assert soa.type == dns.SOA and soa.ttl == NEGATIVE_TTL
    assert soa.payload.serial == 42 and soa.payload.mname == dns.Name(b"ns.peers.test")
    apex = auth.lookup("peers.test", dns.SOA)
    assert [rr.payload.serial for rr in apex.answers] == [42]
