"""The only ``listenUDP`` user: a DatagramProtocol feeding a WireGuardDevice and
implementing :class:`~nbgateway.interfaces.IDatagramLink` for its output."""

from __future__ import annotations

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


def listen(reactor: IReactorUDP, device, port: int, interface: str = "") -> IListeningPort:
    """Bind the device's UDP socket.  ``interface`` '' binds all IPv4 addresses;
    '::' binds dual-stack."""
    return reactor.listenUDP(port, WireGuardProtocol(device), interface=interface)
