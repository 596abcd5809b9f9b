"""Every zope interface that crosses a layer boundary.

Layers only know each other through these: the WireGuard device hands decrypted
IP packets up to an :class:`IPacketSink` (the netstack) and accepts IP packets to
encrypt through :class:`IPacketSender`.  The UDP adapter is an
:class:`IDatagramLink` so the device can be driven by memory links in tests.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IDatagramLink(Interface):
    """Where the WireGuard device sends its encrypted datagrams."""

    def sendDatagram(data: bytes, addr: tuple[str, int]) -> None:
        """Send one UDP datagram to ``addr`` (host, port).  Never raises."""


class IPacketSink(Interface):
    """Receives decrypted, source-checked IP packets from the WireGuard device."""

    def packetReceived(packet: bytes, peer_key: bytes) -> None:
        """One IPv4 or IPv6 packet that arrived from the peer with static
        public key ``peer_key`` (32 raw bytes).  ``packet`` may be a
        memoryview-backed ``bytes``; the sink must not keep references to
        buffers it does not own beyond the call."""


class IPacketSender(Interface):
    """Accepts plaintext IP packets for encryption and transmission."""

    mtu = Attribute("Largest IP packet the device carries (bytes).")

    def sendPacket(packet: bytes) -> bool:
        """Route ``packet`` by its destination address (cryptokey routing) and
        send it.  Returns False if it was dropped (no route, oversized, ...);
        the drop is counted by the device."""
