"""The per-account DNS responder on the gateway's tunnel address, queried from the
Linux kernel side through a real wireguard-go peer (UDP and TCP 53).

Topology as in test_netstack_udp_icmp_interop.py: one namespace the test creates;
wireguard-go (tunnel 100.64.0.2) and the in-process gateway (WireGuardDevice feeding a
netstack ``Stack`` with the real TCP layer on 100.64.0.1) talk over 127.0.0.1 inside
it.  The kernel-side client is a plain Python script that builds the DNS query bytes
itself and parses the reply.  The stack's packet filter is the one the per-account
runtime installs: default deny plus the network map's rules and the DNS rule for the
roster.
"""

from __future__ import annotations

import ipaddress
import sys
import textwrap

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from nbgateway.dns.server import DNSResponderFactory, listen_dns
from nbgateway.dns.zone import ZoneAuthority, service_zones
from nbgateway.mgmt.netmap import DEFAULT_ACTION, DnsRecord, DnsZone, RosterPeer, dns_rule
from nbgateway.netstack.filter import Rule
from nbgateway.netstack.stack import Stack
from nbgateway.wireguard import udp
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from tests.interop.testbed import free_udp_port, inside_netns

pytestmark = pytest.mark.interop

GW4, P4 = "100.64.0.1", "100.64.0.2"

KERNEL_QUERY = textwrap.dedent('''
    import socket, struct, sys

    def query(name, qtype):
        q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
        for label in name.split("."):
            q += bytes([len(label)]) + label.encode()
        return q + b"\\0" + struct.pack("!HH", qtype, 1)

    def parse(m):
        ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", m[:12])
        i = 12
        for _ in range(qd):
            while m[i]:
                i += m[i] + 1
            i += 5
        out = []
        for _ in range(an):
            if m[i] & 0xC0 == 0xC0:
                i += 2
            else:
                while m[i]:
                    i += m[i] + 1
                i += 1
            t, c, ttl, rdlen = struct.unpack("!HHIH", m[i:i + 10])
            i += 10
            rd = m[i:i + rdlen]
            i += rdlen
            if t == 1:
                out.append("%s/%d" % (socket.inet_ntoa(rd), ttl))
        aa = (flags >> 10) & 1
        tc = (flags >> 9) & 1
        return "id=%x rcode=%d aa=%d tc=%d answers=%s" % (
            ident, flags & 0xF, aa, tc, ",".join(out) or "-")

    server = sys.argv[1]
    for name in sys.argv[2:]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(query(name, 1), (server, 53))
        try:
            print("udp", name, parse(s.recv(4096)), flush=True)
        except socket.timeout:
            print("udp", name, "TIMEOUT", flush=True)
        t = socket.create_connection((server, 53), timeout=5)
        msg = query(name, 1)
        t.sendall(struct.pack("!H", len(msg)) + msg)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
            chunk = t.recv(4096)
            if not chunk:
                break
            buf += chunk
        print("tcp", name, parse(buf[2:]), flush=True)
        t.close()
''')


@pytest.fixture
def gateway(testbed):
    ns = testbed.netns()
    dev = WireGuardDevice(generate_private_key(), reactor)
    stack = Stack(dev, reactor, [GW4])
    dev.sink = stack
    with inside_netns(ns.name):
        port = udp.listen(reactor, dev, 0, interface="127.0.0.1")
    wg_port = free_udp_port(ns)
    wg = testbed.wireguard_go(ns, listen_port=wg_port, addresses=[f"{P4}/32"])
    ns.add_route(wg.ifname, f"{GW4}/32")
    wg.add_peer(dev.public_key, allowed_ips=[f"{GW4}/32"],
                endpoint=f"127.0.0.1:{port.getHost().port}")
    dev.add_peer(wg.keys.public, allowed_ips=[f"{P4}/32"], endpoint=("127.0.0.1", wg_port))
    roster = [RosterPeer("peer", wg.keys.public, (ipaddress.ip_network(f"{P4}/32"),))]
    stack.filter.set_rules([Rule.make(**dns_rule(roster).rule_kwargs())], DEFAULT_ACTION)
    yield ns, stack
    stack.close()
    dev.close()
    pytest_twisted.blockon(deferLater(reactor, 0, port.stopListening))


@pytest_twisted.ensureDeferred
async def test_kernel_resolves_private_service_names_on_the_tunnel_address(gateway):
    ns, stack = gateway
    factory = DNSResponderFactory(ZoneAuthority([
        *service_zones(["app.cluster.test"], [GW4]),
        DnsZone("netbird.test.", (DnsRecord("laptop.netbird.test.", 1, 300, P4),)),
    ]), clock=reactor)
    listeners = await listen_dns(stack, factory, GW4)
    try:
        names = ["app.cluster.test", "laptop.netbird.test", "nope.netbird.test", "example.com"]
        res = await threads.deferToThread(
            ns.run, [sys.executable, "-c", KERNEL_QUERY, GW4, *names], check=False, timeout=60,
        )
        lines = set(res.stdout.splitlines())
        for proto in ("udp", "tcp"):
            expect = {
                f"{proto} app.cluster.test id=1234 rcode=0 aa=1 tc=0 answers={GW4}/5",
                f"{proto} laptop.netbird.test id=1234 rcode=0 aa=1 tc=0 answers={P4}/300",
                f"{proto} nope.netbird.test id=1234 rcode=3 aa=1 tc=0 answers=-",
                f"{proto} example.com id=1234 rcode=5 aa=0 tc=0 answers=-",
            }
            assert expect <= lines, res.stdout + res.stderr
        # a zone replacement is visible to the next kernel query
        factory.replace_zones(service_zones(["new.cluster.test"], [GW4]))
        res = await threads.deferToThread(
            ns.run, [sys.executable, "-c", KERNEL_QUERY, GW4, "new.cluster.test",
                     "app.cluster.test"], check=False, timeout=60,
        )
        lines = set(res.stdout.splitlines())
        assert f"udp new.cluster.test id=1234 rcode=0 aa=1 tc=0 answers={GW4}/5" in lines, \
            res.stdout + res.stderr
        assert "udp app.cluster.test id=1234 rcode=5 aa=0 tc=0 answers=-" in lines
        assert stack.counters["drop_filtered"] == 0
    finally:
        await listeners.stop()
