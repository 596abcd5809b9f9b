"""Gateway pairs: a served private name answers with every gateway of the
cluster the management names in the map, the answering gateway's own address
first; the map's other names are untouched."""

from __future__ import annotations

import ipaddress

from twisted.names import dns

from nbgateway.dns.zone import ZoneAuthority, account_zones
from nbgateway.mgmt.netmap import AccountNetwork, DnsRecord, DnsZone

APP = "myapp.eu.proxy.netbird.io."


def net(*zones: DnsZone, own: str = "100.64.0.99", own6: str | None = None) -> AccountNetwork:
    return AccountNetwork(
        serial=1, address=ipaddress.ip_interface(f"{own}/10"),
        address_v6=ipaddress.ip_interface(f"{own6}/64") if own6 else None, zones=zones)


def synthetic(*ips: str) -> DnsZone:
    return DnsZone("eu.proxy.netbird.io.", tuple(DnsRecord(APP, 1, 5, ip) for ip in ips),
                   authoritative=False, search_domain_disabled=True)


def addresses(auth: ZoneAuthority, name: str, qtype: int = dns.A) -> list[str]:
    answer = auth.lookup(name, qtype)
    assert answer.rcode == dns.OK and answer.authoritative
    return [r.payload.dottedQuad() if qtype == dns.A else
            str(ipaddress.ip_address(r.payload.address)) for r in answer.answers]


def test_a_served_name_answers_with_every_gateway_own_first():
    auth = ZoneAuthority(account_zones(
        net(synthetic("100.64.0.98", "100.64.0.99")),
        ["MyApp.eu.proxy.netbird.io", "myapp.eu.proxy.netbird.io."]))
    assert addresses(auth, APP) == ["100.64.0.99", "100.64.0.98"]
    # the other gateway's view of the same map
    auth = ZoneAuthority(account_zones(
        net(synthetic("100.64.0.98", "100.64.0.99"), own="100.64.0.98"), [APP]))
    assert addresses(auth, APP) == ["100.64.0.98", "100.64.0.99"]


def test_alone_or_without_records_only_its_own_address():
    auth = ZoneAuthority(account_zones(net(), [APP]))
    assert addresses(auth, APP) == ["100.64.0.99"]
    auth = ZoneAuthority(account_zones(net(synthetic("100.64.0.99")), [APP]))
    assert addresses(auth, APP) == ["100.64.0.99"]


def test_ipv6_addresses_go_to_aaaa_and_unserved_names_are_not_widened():
    other = DnsZone("eu.proxy.netbird.io.", (
        DnsRecord(APP, 1, 5, "100.64.0.98"), DnsRecord(APP, 28, 5, "fd00::98"),
        DnsRecord("other.eu.proxy.netbird.io.", 1, 5, "100.64.0.97")), authoritative=False)
    auth = ZoneAuthority(account_zones(net(other, own6="fd00::99"), [APP]))
    assert addresses(auth, APP) == ["100.64.0.99", "100.64.0.98"]
    assert addresses(auth, APP, dns.AAAA) == ["fd00::99", "fd00::98"]
    # a name this gateway does not serve keeps the map's answer as it is
    assert auth.lookup("other.eu.proxy.netbird.io.", dns.A).answers[0].payload.dottedQuad() \
        == "100.64.0.97"
