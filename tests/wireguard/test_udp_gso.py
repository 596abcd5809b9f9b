"""UDP segmentation offload in the WireGuard UDP adapter: runs of equal-size
datagrams leave in one ``sendmsg`` (UDP_SEGMENT) and arrive as the same
datagrams; a kernel that refuses it turns it off; errors are counted."""

from __future__ import annotations

import errno
import socket

import pytest
from twisted.internet import reactor

from nbgateway.wireguard import udp


class Device:
    def __init__(self) -> None:
        self.link = None
        self.events: dict[str, int] = {"udp_send_error": 0}

    def datagramReceived(self, data, addr) -> None:
        pass

    def datagramsReceived(self, batch) -> None:
        pass


@pytest.mark.skipif(not udp.GSO_AVAILABLE, reason="UDP_SEGMENT is Linux only")
def test_runs_arrive_as_the_same_datagrams_in_order():
    port = udp.listen(reactor, Device(), 0, interface="127.0.0.1")
    try:
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        sent = [bytes([i]) * 1312 for i in range(100)] + [b"s" * 500] + [b"t" * 200] * 3 \
            + [b"u" * 1312]
        proto = port.protocol
        proto.sendDatagrams(sent, rx.getsockname())
        proto.flush()  # (held until the end of the reactor turn otherwise)
        got = [rx.recv(2000) for _ in sent]
        assert got == sent
        if proto.gso:  # the kernel took it: 100 full ones need two sends of <= 64 (+ short)
            assert 2 <= proto.gso_sends <= 4
        assert proto.send_errors == 0
        rx.close()
    finally:
        port.connectionLost()


class FakeSocket:
    def __init__(self, fail_with: int | None) -> None:
        self.fail_with = fail_with
        self.sent: list[bytes] = []
        self.msgs = 0

    def sendto(self, data, addr) -> None:
        self.sent.append(data)

    def sendmsg(self, buffers, ancdata, flags, addr) -> None:
        self.msgs += 1
        if self.fail_with is not None:
            raise OSError(self.fail_with, "refused")
        self.sent.append(b"".join(buffers))


class FakePort:
    addressFamily = socket.AF_INET
    _connectedAddr = None

    def __init__(self, sock) -> None:
        self.socket = sock


def _proto(fail_with):
    device = Device()
    proto = udp.WireGuardProtocol(device)
    proto.gso = True
    sock = FakeSocket(fail_with)
    proto.transport = FakePort(sock)
    return proto, sock, device


def test_a_kernel_refusing_gso_turns_it_off_and_nothing_is_lost():
    proto, sock, device = _proto(errno.EIO)
    data = [b"a" * 100] * 5
    proto.sendDatagrams(data, ("127.0.0.1", 9))
    assert sock.sent == data and proto.gso is False and sock.msgs == 1
    proto.sendDatagrams(data, ("127.0.0.1", 9))
    assert sock.msgs == 1  # not tried again
    assert device.events["udp_send_error"] == 0


def test_a_failed_gso_send_counts_every_datagram_of_the_run():
    proto, sock, device = _proto(errno.EAGAIN)
    proto.sendDatagrams([b"a" * 100] * 5 + [b"b" * 7], ("127.0.0.1", 9))
    assert sock.sent == [] and proto.gso is True
    assert device.events["udp_send_error"] == 6 == proto.send_errors


def test_grouping_equal_sizes_a_short_last_and_singles():
    proto, sock, _ = _proto(None)
    data = [b"x" * 10] * 3 + [b"y" * 4] + [b"z" * 20] + [b"w" * 5] * 2
    proto.sendDatagrams(data, ("127.0.0.1", 9))
    # runs: 3 x 10 + a shorter last 4; then 20 + a shorter last 5; then a single 5
    assert sock.sent == [b"x" * 30 + b"y" * 4, b"z" * 20 + b"w" * 5, b"w" * 5]
    assert sock.msgs == 2
