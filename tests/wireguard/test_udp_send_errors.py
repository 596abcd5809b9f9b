"""``sendto`` error semantics of the WireGuard UDP adapter, for a lone
datagram (sent inline by ``_send_now``) and for several (``_send_raw``'s
loop): EINTR is retried once, ECONNREFUSED (an earlier ICMP error on the
unconnected socket) ignored, anything else counted; a host that is not an
address of the socket's family goes through Twisted's write instead."""

from __future__ import annotations

import errno
import socket

import pytest

from nbgateway.wireguard import udp

ADDR = ("127.0.0.1", 51820)


class Device:
    def __init__(self) -> None:
        self.link = None
        self.events: dict[str, int] = {"udp_send_error": 0}


class ScriptedSocket:
    """``sendto`` raises the scripted errnos in turn, then succeeds."""

    def __init__(self, errors: list[int]) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.sent: list[bytes] = []

    def sendto(self, data, addr) -> None:
        self.calls += 1
        if self.errors:
            raise OSError(self.errors.pop(0), "scripted")
        self.sent.append(data)


class FakePort:
    addressFamily = socket.AF_INET
    _connectedAddr = None

    def __init__(self, sock) -> None:
        self.socket = sock
        self.written: list = []

    def write(self, data, addr) -> None:
        self.written.append((data, addr))


def _protocol(errors: list[int]) -> tuple[udp.WireGuardProtocol, ScriptedSocket, FakePort]:
    proto = udp.WireGuardProtocol(Device())
    proto.gso = False  # several datagrams: one sendto each (_send_raw)
    sock = ScriptedSocket(errors)
    proto.transport = FakePort(sock)
    return proto, sock, proto.transport


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize(("errors", "sent", "counted"), [
    ([], 1, 0),
    ([errno.EINTR], 1, 0),  # retried once: sent
    ([errno.EINTR, errno.EINTR], 0, 1),  # the retry failed too: counted
    ([errno.EINTR, errno.ECONNREFUSED], 0, 0),
    ([errno.ECONNREFUSED], 0, 0),  # ignored, not retried, not counted
    ([errno.ENOBUFS], 0, 1),
    ([errno.EMSGSIZE], 0, 1),
])
def test_sendto_errors(count, errors, sent, counted):
    proto, sock, _port = _protocol(errors)
    datagrams = [b"d%d" % i for i in range(count)]
    proto.sendDatagrams(datagrams, ADDR)
    # the errors hit the first datagram; any second one goes out normally
    assert sock.sent == datagrams[:sent] + datagrams[1:]
    assert proto.send_errors == counted
    assert proto.device.events["udp_send_error"] == counted


def test_a_lone_datagram_to_a_host_of_another_family_goes_through_write():
    proto, sock, port = _protocol([])
    proto.sendDatagram(b"x", ("::1", 1))
    proto.sendDatagram(b"y", ("::1", 1))  # (the family verdict is cached)
    assert sock.calls == 0 and port.written == [(b"x", ("::1", 1)), (b"y", ("::1", 1))]
    proto.sendDatagram(b"z", ADDR)
    assert sock.sent == [b"z"]
