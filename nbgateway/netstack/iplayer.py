"""The IP layer as the stack's protocol layers see it: :class:`IIPLayer`.

:class:`~nbgateway.netstack.stack.Stack` implements this small public
interface and the ICMP and UDP layers (:mod:`nbgateway.netstack.icmp`,
:mod:`nbgateway.netstack.udp`) use only it -- never the stack's private
state -- so those modules do not import the stack module (no module cycle:
``stack`` imports the layers, the layers import this interface).  Addresses
are raw packed bytes (4 or 16), as on the wire.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IIPLayer(Interface):
    """What a transport or control layer may ask of the IP layer below it."""

    clock = Attribute("IReactorTime: the injected clock")
    counters = Attribute("collections.Counter shared by every layer (drop reasons etc.)")
    filter = Attribute("the PacketFilter applied to inbound packets")
    mtu = Attribute("int: the tunnel MTU")
    fragment_output = Attribute("bool: oversized UDP/ICMP datagrams are fragmented at the source")
    tcp = Attribute("the TCP layer (may be None), told about ICMP errors")
    udp = Attribute("the UDP layer, told about ICMP errors")

    def send_ip(src: bytes, dst: bytes, protocol: int, payload: bytes | bytearray) -> bool:  # noqa: N805
        """Prepend an IP header and send; False when dropped or refused (counted)."""

    def send_transport(src: bytes, dst: bytes, protocol: int, segment: bytearray) -> bool:  # noqa: N805
        """Fill the TCP/UDP checksum of ``segment`` in place, then :meth:`send_ip`."""

    def source_for(dst: bytes) -> bytes | None:  # noqa: N805
        """The local address used to reach ``dst`` (None: no address of that family)."""

    def local_address(raw: bytes) -> object | None:  # noqa: N805
        """The ipaddress object of one of the stack's own addresses, or None."""

    def address_object(raw: bytes) -> object:  # noqa: N805
        """The (cached) ipaddress object of any raw address."""

    def address_text(raw: bytes) -> str:  # noqa: N805
        """The (cached) text form of any raw address."""

    def port_unreachable(src: bytes, dst: bytes, quote: bytes, now: float) -> None:  # noqa: N805
        """Answer a datagram from ``src`` to a closed port of ``dst`` (rate limited)."""

    def wakeup() -> None:
        """Re-arm the stack's timer (a layer's deadline may have moved earlier)."""
