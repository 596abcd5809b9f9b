"""The only ``listenUDP`` user: a DatagramProtocol feeding a WireGuardDevice and
implementing :class:`~nbgateway.interfaces.IDatagramLink` for its output."""

from __future__ import annotations

import socket

from twisted.internet.interfaces import IListeningPort, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from nbgateway.interfaces import IDatagramLink

log = Logger()


@implementer(IDatagramLink)
class WireGuardProtocol(DatagramProtocol):
    """Hands every datagram to the device; sends the device's datagrams."""

    def __init__(self, device) -> None:
        self.device = device
        self.send_errors = 0

    def startProtocol(self) -> None:
        self.device.link = self

    def stopProtocol(self) -> None:
        if self.device.link is self:
            self.device.link = None

    def datagramReceived(self, datagram: bytes, addr) -> None:
        self.device.datagramReceived(datagram, (addr[0], addr[1]))

    def sendDatagram(self, data: bytes, addr: tuple[str, int]) -> None:
        transport = self.transport
        if transport is None:
            self.send_errors += 1
            return
        try:
            transport.write(data, addr)
        except OSError as exc:  # EMSGSIZE, unreachable, bad address family ...
            self.send_errors += 1
            self.device.counters["udp_send_error"] += 1
            log.debug("UDP send to {addr} failed: {err}", addr=addr, err=exc)

    def connectionRefused(self) -> None:  # ICMP port unreachable on a connected socket
        self.device.counters["udp_refused"] += 1


#: socket buffer size asked for (bursts of handshakes or a fast sender must
#: not overflow the 208 KiB Linux default; wireguard-go asks for 7 MiB)
SOCKET_BUFFER = 4 * 1024 * 1024
_FORCE = {socket.SO_RCVBUF: getattr(socket, "SO_RCVBUFFORCE", None),
          socket.SO_SNDBUF: getattr(socket, "SO_SNDBUFFORCE", None)}


def enlarge_buffers(sock: socket.socket, size: int = SOCKET_BUFFER) -> tuple[int, int]:
    """Grow the receive and send buffers of ``sock`` towards ``size`` (beyond
    net.core.[rw]mem_max when privileged); returns the sizes obtained."""
    for opt, force in _FORCE.items():
        for name in (force, opt):
            if name is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, name, size)
                break
            except OSError:
                continue
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))


def listen(reactor: IReactorUDP, device, port: int, interface: str = "") -> IListeningPort:
    """Bind the device's UDP socket (with enlarged buffers).  ``interface`` ''
    binds all IPv4 addresses; '::' binds dual-stack."""
    listening = reactor.listenUDP(port, WireGuardProtocol(device), interface=interface)
    sock = getattr(listening, "socket", None)
    if sock is not None:
        rcv, snd = enlarge_buffers(sock)
        log.debug("WireGuard UDP buffers: receive {rcv}, send {snd}", rcv=rcv, snd=snd)
    return listening
