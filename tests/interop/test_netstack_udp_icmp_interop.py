"""The netstack's IP/ICMP/UDP layer behind the WireGuard device, against a real
wireguard-go peer and the Linux kernel stack (issue 3 Interop 7: UDP echo both
directions; plus ICMP echo and fragmentation both ways).

Topology: one namespace the test creates; wireguard-go (tunnel 100.64.0.2 /
fd00:64::2) and the in-process gateway (WireGuardDevice feeding a netstack
``Stack`` on 100.64.0.1 / fd00:64::1) talk over 127.0.0.1 inside it.  Kernel
tools (ping, a Python UDP client/server) run in the namespace as subprocesses
off the reactor thread.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater

from nbgateway.netstack.stack import Stack
from nbgateway.netstack.testing import StubTCP
from nbgateway.netstack.udp import listen_udp
from nbgateway.wireguard import udp
from nbgateway.wireguard.device import WireGuardDevice
from nbgateway.wireguard.keys import generate_private_key
from tests.interop.testbed import free_udp_port, inside_netns, ping_loss

pytestmark = pytest.mark.interop

GW4, GW6, P4, P6 = "100.64.0.1", "fd00:64::1", "100.64.0.2", "fd00:64::2"

KERNEL_CLIENT = textwrap.dedent('''
    import socket
    for fam, host in ((socket.AF_INET, "100.64.0.1"), (socket.AF_INET6, "fd00:64::1")):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(3)
        for size in (5, 1300, 5000):
            payload = bytes(range(256)) * (size // 256) + b"t" * (size % 256)
            s.sendto(payload, (host, 7))
            try:
                d, a = s.recvfrom(65536)
                print("echo", host, size, "ok" if d == payload else "CORRUPT", flush=True)
            except socket.timeout:
                print("echo", host, size, "TIMEOUT", flush=True)
        c = socket.socket(fam, socket.SOCK_DGRAM)
        c.settimeout(3)
        c.connect((host, 8))
        c.send(b"x")
        try:
            c.recv(10)
            print("closed", host, "DATA", flush=True)
        except ConnectionRefusedError:
            print("closed", host, "refused", flush=True)
        except socket.timeout:
            print("closed", host, "TIMEOUT", flush=True)
''')

KERNEL_SERVER = textwrap.dedent('''
    import socket
    srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", 9999))
    srv.settimeout(10)
    print("READY", flush=True)
    for _ in range(2):
        d, a = srv.recvfrom(70000)
        srv.sendto(d[::-1], a)
        print("got", len(d), a[0], flush=True)
''')


class Echo(DatagramProtocol):
    def datagramReceived(self, data, addr):
        self.transport.write(data, addr)


class Collect(DatagramProtocol):
    def __init__(self):
        self.got = []

    def datagramReceived(self, data, addr):
        self.got.append((data, addr))


@pytest.fixture
def gateway(testbed):
    ns = testbed.netns()
    dev = WireGuardDevice(generate_private_key(), reactor)
    stack = Stack(dev, reactor, [GW4, GW6], tcp_factory=StubTCP)
    dev.sink = stack
    with inside_netns(ns.name):
        port = udp.listen(reactor, dev, 0, interface="127.0.0.1")
    wg_port = free_udp_port(ns)
    wg = testbed.wireguard_go(ns, listen_port=wg_port, addresses=[f"{P4}/32", f"{P6}/128"])
    for cidr in (f"{GW4}/32", f"{GW6}/128"):
        ns.add_route(wg.ifname, cidr)
    wg.add_peer(dev.public_key, allowed_ips=[f"{GW4}/32", f"{GW6}/128"],
                endpoint=f"127.0.0.1:{port.getHost().port}")
    dev.add_peer(wg.keys.public, allowed_ips=[f"{P4}/32", f"{P6}/128"],
                 endpoint=("127.0.0.1", wg_port))
    yield ns, dev, stack
    stack.close()
    dev.close()
    pytest_twisted.blockon(deferLater(reactor, 0, port.stopListening))


@pytest_twisted.ensureDeferred
async def test_kernel_pings_the_netstack_including_fragmented(gateway):
    ns, _dev, stack = gateway
    for dst in (GW4, GW6):
        for size in ("56", "3000"):
            res = await threads.deferToThread(
                ns.run, ["ping", "-c", "3", "-i", "0.2", "-W", "2", "-s", size, dst],
                check=False,
            )
            assert res.returncode == 0 and ping_loss(res.stdout) == 0.0, res.stdout
    assert stack.counters["frag_reassembled"] >= 6 and stack.counters["tx_fragments"] >= 12
    assert stack.counters["error_internal"] == 0


@pytest_twisted.ensureDeferred
async def test_udp_echo_kernel_to_netstack_and_port_unreachable(gateway):
    ns, _dev, stack = gateway
    listen_udp(stack, 7, Echo())
    res = await threads.deferToThread(
        ns.run, [sys.executable, "-c", KERNEL_CLIENT], check=False, timeout=40,
    )
    lines = res.stdout.splitlines()
    for host in (GW4, GW6):
        for size in (5, 1300, 5000):
            assert f"echo {host} {size} ok" in lines, res.stdout + res.stderr
        assert f"closed {host} refused" in lines, res.stdout
    assert stack.counters["icmp_error_tx"] == 2


@pytest_twisted.ensureDeferred
async def test_udp_and_ping_netstack_to_kernel(gateway):
    ns, _dev, stack = gateway
    proc = ns.popen([sys.executable, "-c", KERNEL_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert (await threads.deferToThread(proc.stdout.readline)).strip() == "READY"
        client = Collect()
        cport = listen_udp(stack, 0, client)
        big = bytes(range(256)) * 12
        cport.write(big, (P4, 9999))
        cport.write(b"hello-v6", (P6, 9999))
        deadline = reactor.seconds() + 10
        while len(client.got) < 2 and reactor.seconds() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        assert sorted(client.got) == sorted([(big[::-1], (P4, 9999)),
                                             (b"6v-olleh", (P6, 9999))])
        for dst in (P4, P6):
            rtt = await stack.ping(dst, b"z" * 2000, timeout=5.0)
            assert 0 < rtt < 5
    finally:
        proc.kill()
        await threads.deferToThread(proc.wait)
