"""UDP sockets through the Twisted adapter, between two stacks on a MemoryLink."""

from __future__ import annotations

import pytest
from twisted.internet import address, error
from twisted.internet.interfaces import IListeningPort, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

from nbgateway.netstack import wire
from nbgateway.netstack.testing import (
    StubTCP,
    advance,
    build_udp,
    make_stack_pair,
)
from nbgateway.netstack.udp import EPHEMERAL_LOW, listen_udp

A4, B4, A6, B6 = "100.64.0.1", "100.64.0.2", "fd00::1", "fd00::2"


class Echo(DatagramProtocol):
    def __init__(self):
        self.got = []
        self.started = self.stopped = 0

    def startProtocol(self):
        self.started += 1

    def stopProtocol(self):
        self.stopped += 1

    def datagramReceived(self, data, addr):
        self.got.append((data, addr))
        self.transport.write(data.upper(), addr)


class Client(DatagramProtocol):
    def __init__(self):
        self.got = []
        self.refused = 0

    def datagramReceived(self, data, addr):
        self.got.append((data, addr))

    def connectionRefused(self):
        self.refused += 1


def pair(mtu=1280, **stack_kwargs):
    clock = Clock()
    a, b, link = make_stack_pair(
        clock, (A4, A6), (B4, B6), mtu=mtu, tcp_factory=StubTCP, stack_kwargs=stack_kwargs,
    )
    return clock, a, b, link


@pytest.mark.parametrize(("server_addr", "client_if"), [(B4, ""), (B6, ""), (B4, A4)])
def test_echo_roundtrip(server_addr, client_if):
    clock, a, b, _link = pair()
    server = Echo()
    sport = listen_udp(b, 5353, server)
    assert IListeningPort.providedBy(sport) and IUDPTransport.providedBy(sport)
    assert server.started == 1
    client = Client()
    cport = listen_udp(a, 0, client, interface=client_if)
    port = cport.getHost().port
    assert EPHEMERAL_LOW <= port <= 65535
    cport.write(b"hello", (server_addr, 5353))
    advance(clock, 0.1)
    me = A4 if ":" not in server_addr else A6
    assert server.got == [(b"hello", (me, port))]
    assert client.got == [(b"HELLO", (server_addr, 5353))]
    assert b.counters["udp_rx"] == 1 and a.counters["udp_tx"] == 1


def test_get_host_and_bind_rules():
    _clock, a, _b, _link = pair()
    p = listen_udp(a, 53, Echo(), interface=A4)
    assert p.getHost() == address.IPv4Address("UDP", A4, 53)
    p6 = listen_udp(a, 53, Echo(), interface=A6)
    assert p6.getHost() == address.IPv6Address("UDP", A6, 53)
    with pytest.raises(error.CannotListenError):
        listen_udp(a, 53, Echo(), interface=A4)
    with pytest.raises(error.CannotListenError):
        listen_udp(a, 53, Echo())  # wildcard overlaps the specific bindings
    with pytest.raises(error.CannotListenError):
        listen_udp(a, 54, Echo(), interface="100.64.0.99")
    with pytest.raises(error.CannotListenError):
        listen_udp(a, 54, Echo(), interface="not-an-ip")
    w = listen_udp(a, 55, Echo())
    assert w.getHost() == address.IPv4Address("UDP", "0.0.0.0", 55)
    with pytest.raises(error.CannotListenError):
        listen_udp(a, 55, Echo(), interface=A6)


def test_stop_listening_then_port_unreachable_and_connection_refused():
    clock, a, b, _link = pair()
    server = Echo()
    sport = listen_udp(b, 7, server)
    client = Client()
    cport = listen_udp(a, 0, client)
    cport.connect(B4, 7)
    cport.write(b"one")
    advance(clock, 0.1)
    assert client.got == [(b"ONE", (B4, 7))]
    d = sport.stopListening()
    assert d.called and server.stopped == 1
    cport.write(b"two")
    advance(clock, 0.1)
    assert b.counters["udp_no_port"] == 1 and b.counters["icmp_error_tx"] == 1
    assert a.counters["icmp_error_rx"] == 1
    assert client.refused == 1
    # rebinding the port after stopListening works
    listen_udp(b, 7, Echo())


def test_connected_socket_ignores_other_sources():
    _clock, a, _b, _link = pair()
    client = Client()
    cport = listen_udp(a, 4000, client, interface=A4)
    cport.connect(B4, 7)
    a.packetReceived(build_udp(B4, A4, 8, 4000, b"intruder"), b"k" * 32)
    a.packetReceived(build_udp(B4, A4, 7, 4000, b"ok"), b"k" * 32)
    assert client.got == [(b"ok", (B4, 7))]
    assert a.counters["drop_udp_not_connected"] == 1
    with pytest.raises(ValueError):
        cport.write(b"x", (B4, 7))
    with pytest.raises(RuntimeError):
        cport.connect(B4, 8)


def test_write_errors():
    _clock, a, _b, _link = pair(mtu=1280)
    p = listen_udp(a, 0, Client(), interface=A4)
    with pytest.raises(error.MessageLengthError):
        p.write(b"x" * (65507 + 1), (B4, 9))
    p.write(b"x" * 65507, (B4, 9))
    _clock, nofrag, _b, _link = pair(mtu=1280, fragment_output=False)
    q = listen_udp(nofrag, 0, Client(), interface=A4)
    with pytest.raises(error.MessageLengthError):
        q.write(b"x" * (1280 - 28 + 1), (B4, 9))
    q.write(b"x" * (1280 - 28), (B4, 9))
    with pytest.raises(error.InvalidAddressError):
        p.write(b"x", ("example.com", 9))
    with pytest.raises(error.InvalidAddressError):
        p.write(b"x", (B6, 9))  # bound to an IPv4 address
    with pytest.raises(error.InvalidAddressError):
        p.write(b"x", (B4, 0))
    with pytest.raises(ValueError):
        p.write(b"x")
    p.stopListening()
    with pytest.raises(error.NotListeningError):
        p.write(b"x", (B4, 9))
    p.setBroadcastAllowed(True)
    assert p.getBroadcastAllowed()


def test_port_unreachable_rate_limited():
    clock, _a, b, link = pair(icmp_error_rate=10.0, icmp_error_burst=5)
    for i in range(50):
        b.packetReceived(build_udp(A4, B4, 1000 + i, 9, b"x"), b"k" * 32)
    assert b.counters["icmp_error_tx"] == 5
    assert b.counters["icmp_rate_limited"] == 45
    advance(clock, 1.0, step=0.5)
    b.packetReceived(build_udp(A4, B4, 999, 9, b"x"), b"k" * 32)
    assert b.counters["icmp_error_tx"] == 6
    assert link.counters["sent"] == 6


def test_protocol_exception_is_contained():
    clock, a, b, _link = pair()

    class Bad(DatagramProtocol):
        def datagramReceived(self, data, addr):
            raise ZeroDivisionError

    listen_udp(b, 9, Bad())
    c = listen_udp(a, 0, Client())
    c.write(b"x", (B4, 9))
    advance(clock, 0.1)
    assert b.counters["udp_protocol_error"] == 1
    assert b.counters["error_internal"] == 0


def test_ipv4_zero_checksum_accepted():
    _clock, _a, b, _link = pair()
    server = Client()
    listen_udp(b, 9, server)
    b.packetReceived(build_udp(A4, B4, 1, 9, b"nock", zero_checksum=True), b"k" * 32)
    b.packetReceived(build_udp(A6, B6, 1, 9, b"nock", zero_checksum=True), b"k" * 32)
    assert server.got == [(b"nock", (A4, 1))]
    assert b.counters["drop_udp_bad_checksum"] == 1


def test_bad_udp_length_dropped():
    _clock, _a, b, _link = pair()
    listen_udp(b, 9, Client())
    pkt = bytearray(build_udp(A4, B4, 1, 9, b"abc"))
    pkt[24:26] = (200).to_bytes(2, "big")
    b.packetReceived(bytes(pkt), b"k" * 32)
    assert b.counters["drop_udp_bad_length"] == 1
    assert wire.PROTO_UDP == 17


@pytest.mark.parametrize("server_addr", [B4, B6])
@pytest.mark.parametrize("size", [1253, 3000, 65507])
def test_large_datagrams_fragment_and_reassemble(server_addr, size):
    clock, a, b, link = pair(max_reassembly_bytes=128 * 1024)
    server = Echo()
    listen_udp(b, 7, server)
    client = Client()
    cport = listen_udp(a, 0, client)
    data = bytes(range(256)) * (size // 256) + b"t" * (size % 256)
    cport.write(data, (server_addr, 7))
    advance(clock, 0.1)
    assert server.got == [(data, (A4 if ":" not in server_addr else A6, cport.getHost().port))]
    assert client.got == [(data.upper(), (server_addr, 7))]
    assert a.counters["tx_fragments"] > 1 and b.counters["frag_reassembled"] == 1
    assert link.counters["oversize"] == 0
