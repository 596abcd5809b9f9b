"""``WireGuardProtocol.sendDatagram`` (one datagram, the device's lone
response) against the general ``sendDatagrams([data])`` it stands for: the
same socket calls, held datagrams, end-of-turn call, errors and counters, for
every output mode (held or not, first send of a turn or not, a full hold),
socket state (none, connected, an address of another family) and send error."""

from __future__ import annotations

import errno
import itertools
from collections import Counter

import pytest

from nbgateway.wireguard import udp


class FakeDevice:
    def __init__(self) -> None:
        self.link = None
        self.events: Counter[str] = Counter()


class FakeCall:
    def __init__(self, log: list, fn) -> None:
        self.log, self.fn = log, fn

    def active(self) -> bool:
        return True

    def cancel(self) -> None:
        self.log.append("cancel")


class FakeReactor:
    def __init__(self, log: list) -> None:
        self.log = log

    def callLater(self, delay, fn, *a):
        self.log.append(("callLater", delay, fn.__name__))
        return FakeCall(self.log, fn)


class FakeSocket:
    def __init__(self, log: list, errors: list[int]) -> None:
        self.log, self.errors = log, list(errors)

    def sendto(self, data, addr):
        self.log.append(("sendto", bytes(data), addr))
        if self.errors:
            raise OSError(self.errors.pop(0), "fake")

    def sendmsg(self, buffers, ancdata, flags, addr):
        self.log.append(("sendmsg", b"".join(buffers), ancdata, addr))


class FakeTransport:
    def __init__(self, log: list, sock, connected, reactor) -> None:
        self.log = log
        if sock is not None:
            self.socket = sock
        self._connectedAddr = connected
        self.reactor = reactor

    def write(self, data, addr):
        self.log.append(("write", bytes(data), addr))


def _run(lone: bool, batch_sends: bool, send_first: bool, armed: bool, nearly_full: bool,
         sock: bool, connected: bool, addr, errors: list[int]):
    log: list = []
    device = FakeDevice()
    proto = udp.WireGuardProtocol(device, batch_sends=batch_sends, send_first=send_first)
    reactor = FakeReactor(log)
    proto.transport = FakeTransport(log, FakeSocket(log, errors) if sock else None,
                                    ("1.2.3.4", 5) if connected else None, reactor)
    if armed:
        proto._flush_call = FakeCall(log, proto._end_of_turn)
    if nearly_full:
        proto._held[("9.9.9.9", 9)] = [b"h"] * (udp.HOLD_MAX - 1)
        proto._held_count = udp.HOLD_MAX - 1
    for data in (b"one", b"two"):
        if lone:
            proto.sendDatagram(data, addr)
        else:
            proto.sendDatagrams([data], addr)
    return (log, {k: list(v) for k, v in proto._held.items()}, proto._held_count,
            proto._flush_call is not None, proto.send_errors, proto.held_flushes,
            dict(device.events), dict(proto._families))


CASES = list(itertools.product(
    (False, True), (False, True), (False, True), (False, True),  # hold, first, armed, full
    ((True, False), (False, False), (True, True)),  # socket, connected
    (("127.0.0.1", 51820), ("::1", 51820), ("not-an-ip", 1)),
    ([], [errno.EINTR], [errno.EINTR, errno.EINTR], [errno.ECONNREFUSED], [errno.ENOBUFS]),
))


@pytest.mark.parametrize("batch_sends,send_first,armed,nearly_full,sock_state,addr,errors",
                         CASES)
def test_send_datagram_is_send_datagrams_of_one(batch_sends, send_first, armed, nearly_full,
                                                 sock_state, addr, errors):
    sock, connected = sock_state
    args = (batch_sends, send_first, armed, nearly_full, sock, connected, addr, errors)
    assert _run(True, *args) == _run(False, *args)


def test_the_device_sends_a_lone_packet_with_send_datagram(pair):
    """The device's lone-packet path (``sendPacket`` to a cached route with a
    fresh session) hands the datagram to ``sendDatagram``; the peer decrypts
    it as it would one from ``sendDatagrams``."""
    from zope.interface import implementer

    from nbgateway.interfaces import IDatagramBatchLink
    from nbgateway.wireguard.testing import ipv4_packet
    from tests.wireguard.conftest import A_ADDR

    pair.a.sendPacket(ipv4_packet("10.0.0.1", "10.0.0.2", b"hello"))
    pair.run(1.0)  # the handshake, then the packet
    assert [p for p, _k in pair.sink_b.packets] == [ipv4_packet("10.0.0.1", "10.0.0.2",
                                                                b"hello")]

    @implementer(IDatagramBatchLink)
    class Calls:
        def __init__(self) -> None:
            self.calls: list = []

        def sendDatagram(self, data, addr):
            self.calls.append(("one", data, addr))

        def sendDatagrams(self, datagrams, addr):
            self.calls.append(("run", list(datagrams), addr))

    real, pair.a.link = pair.a.link, Calls()
    packet = ipv4_packet("10.0.0.1", "10.0.0.2", b"lone")
    assert pair.a.sendPacket(packet)
    [(how, data, addr)] = pair.a.link.calls
    assert how == "one" and addr == pair.a.peers[next(iter(pair.a.peers))].endpoint
    pair.a.link = real
    pair.b.datagramsReceived([(data, A_ADDR)])
    assert pair.sink_b.packets[-1][0] == packet


@pytest.mark.parametrize("batch_sends", [False, True])
@pytest.mark.parametrize("lone", [True, False])
def test_ports_without_the_attributes_are_read_as_getattr_did(lone, batch_sends):
    """The send path reads the port's ``socket``, ``_connectedAddr`` and
    ``reactor`` directly; a transport lacking any (or none at all) is treated
    as ``getattr(transport, name, None)`` treated it (no reactor: nothing is
    held, the datagram leaves at once)."""
    log: list = []

    class NoConnectedAttr:  # a socket, no _connectedAddr: sent with sendto
        socket = FakeSocket(log, [])
        reactor = None

    class NoSocketAttr:  # none of them: through the transport's write
        def write(self, data, addr):
            log.append(("write", bytes(data), addr))

    proto = udp.WireGuardProtocol(FakeDevice(), batch_sends=batch_sends)
    addr = ("127.0.0.1", 51820)
    for transport, kind in ((NoConnectedAttr(), "sendto"), (NoSocketAttr(), "write")):
        log.clear()
        proto.transport = transport
        if lone:
            proto.sendDatagram(b"d", addr)
        else:
            proto.sendDatagrams([b"d"], addr)
        assert log == [(kind, b"d", addr)]
    proto.transport = None
    if lone:
        proto.sendDatagram(b"d", addr)
    else:
        proto.sendDatagrams([b"d"], addr)
    assert proto.send_errors == 1
