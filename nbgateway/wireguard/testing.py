"""In-memory plumbing for testing WireGuard devices without sockets.

:class:`MemoryNetwork` is a tiny UDP "internet": devices attach at an address and
datagrams are queued until :meth:`MemoryNetwork.pump` delivers them, as a socket
read would: consecutive datagrams for one device arrive in one
``datagramsReceived`` call (``batch_reads=False``: one ``datagramReceived`` each).
Tests can intercept, drop, duplicate or rewrite datagrams through ``filter``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from zope.interface import implementer

from nbgateway.interfaces import IDatagramLink, IPacketSink

Addr = tuple[str, int]


@implementer(IDatagramLink)
class _Attachment:
    def __init__(self, network: MemoryNetwork, addr: Addr) -> None:
        self.network = network
        self.addr = addr

    def sendDatagram(self, data: bytes, addr: Addr) -> None:
        self.network.queue.append((self.addr, addr, bytes(data)))


class MemoryNetwork:
    """Queues datagrams between attached devices; deliver with :meth:`pump`."""

    def __init__(self, batch_reads: bool = True) -> None:
        self.batch_reads = batch_reads
        self.devices: dict[Addr, object] = {}
        self.queue: deque[tuple[Addr, Addr, bytes]] = deque()
        self.delivered: list[tuple[Addr, Addr, bytes]] = []
        # filter(src, dst, data) -> list of datagrams to deliver instead (may be empty)
        self.filter: Callable[[Addr, Addr, bytes], list[bytes]] | None = None

    def attach(self, device, addr: Addr) -> Addr:
        self.devices[addr] = device
        device.link = _Attachment(self, addr)
        return addr

    def move(self, device, new_addr: Addr) -> None:
        """Re-attach ``device`` at a new address (roaming)."""
        for a, d in list(self.devices.items()):
            if d is device:
                del self.devices[a]
        self.attach(device, new_addr)

    def pump(self, limit: int = 10_000) -> int:
        """Deliver queued datagrams (and those sent in reply, up to ``limit``);
        returns how many were taken off the queue."""
        n = 0
        while self.queue and n < limit:
            # what is queued now is one "read"; replies queue for the next round
            take = min(len(self.queue), limit - n)
            reads: list[tuple[object, list[tuple[bytes, Addr]]]] = []
            for _ in range(take):
                src, dst, data = self.queue.popleft()
                datagrams = [data] if self.filter is None else self.filter(src, dst, data)
                target = self.devices.get(dst)
                for d in datagrams:
                    self.delivered.append((src, dst, d))
                    if target is None:
                        continue
                    if reads and reads[-1][0] is target and self.batch_reads:
                        reads[-1][1].append((d, src))
                    else:
                        reads.append((target, [(d, src)]))
            n += take
            for target, batch in reads:
                if self.batch_reads:
                    target.datagramsReceived(batch)
                else:
                    for d, src in batch:
                        target.datagramReceived(d, src)
        return n


@implementer(IPacketSink)
class CollectingSink:
    """Records every delivered packet with the sending peer's key."""

    def __init__(self) -> None:
        self.packets: list[tuple[bytes, bytes]] = []

    def packetReceived(self, packet: bytes, peer_key: bytes) -> None:
        self.packets.append((bytes(packet), peer_key))


def ipv4_packet(src: str, dst: str, payload: bytes = b"", proto: int = 17) -> bytes:
    """A minimal, well-formed IPv4 packet (header checksum filled)."""
    import ipaddress
    import struct

    from nbgateway.netstack.checksum import internet_checksum

    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
            ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
        )
    )
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header) + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"", next_header: int = 17) -> bytes:
    import ipaddress
    import struct

    return struct.pack(
        "!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
        ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed,
    ) + payload
