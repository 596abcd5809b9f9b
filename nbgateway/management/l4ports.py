"""Public L4 ports the gateways of a cluster advertise, and the checks on a
service's ``listen_port`` against them.  Pure: no store, no sockets.

A gateway (nbgateway) advertises in its capabilities
(``ProxyCapabilities.nbgw_l4_public_ports``) the host ports a public (not
private) TCP/UDP/TLS service may bind -- its ``--l4-public-ports`` -- and its
main HTTPS port, on which a TLS service is accepted whatever the ranges
(routed by SNI).  A gateway that advertised nothing (upstream's proxy, an
older nbgateway) imposes nothing.

* :func:`from_proto` reads the advertisement, dropping invalid ranges (fewer
  ports: fails closed) and keeping at most :data:`MAX_RANGES`.
* :func:`format_ranges` / :func:`parse_ranges`: the stored text, in the
  flag's syntax (``1024-65535``, ``53,8000-8999``; ``""`` = no port).
* :func:`refusal`: why a public L4 ``listen_port`` is refused by the active
  advertising gateways of its cluster (the 422 message), or None.
* :func:`pick_port`: the auto-assigned port of a public TCP/UDP service,
  inside every advertising gateway's ranges.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from nbgateway.portranges import Ranges, format_ranges, merge

#: ranges kept from one advertisement (a few in practice); more are dropped
MAX_RANGES = 256



@dataclass(frozen=True)
class GatewayPorts:
    """What one gateway advertised: the ranges and its TLS (main HTTPS) port."""

    ranges: Ranges = ()
    #: a TLS service on this port is accepted whatever the ranges; 0 = none
    tls_port: int = 0

    def allows(self, mode: str, port: int) -> bool:
        if mode == "tls" and self.tls_port and port == self.tls_port:
            return True
        return any(lo <= port <= hi for lo, hi in self.ranges)


def from_proto(msg: Any) -> GatewayPorts:
    """A ``NbgwL4Ports`` message as :class:`GatewayPorts` (invalid ranges
    dropped: fewer ports; past :data:`MAX_RANGES` the rest dropped too)."""
    valid = [(r.first, r.last) for r in msg.ranges if 1 <= r.first <= r.last <= 65535]
    tls = msg.tls_port if 1 <= msg.tls_port <= 65535 else 0
    return GatewayPorts(merge(valid[:MAX_RANGES]), tls)


def parse_ranges(text: str) -> Ranges:
    """The stored text back (written by :func:`format_ranges`); an item that
    does not parse is dropped (fewer ports)."""
    out = []
    for item in text.split(","):
        lo_text, sep, hi_text = item.strip().partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            continue
        if 1 <= lo <= hi <= 65535:
            out.append((lo, hi))
    return merge(out)


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """The ports in both (merged inputs)."""
    out = []
    for alo, ahi in a:
        for blo, bhi in b:
            lo, hi = max(alo, blo), min(ahi, bhi)
            if lo <= hi:
                out.append((lo, hi))
    return merge(out)


def common_ranges(gateways: Sequence[GatewayPorts]) -> Ranges:
    """The ports inside every gateway's ranges (``gateways`` not empty)."""
    common = gateways[0].ranges
    for g in gateways[1:]:
        common = intersect(common, g.ranges)
    return common


def refusal(mode: str, port: int, cluster: str,
            gateways: Sequence[GatewayPorts]) -> str | None:
    """Why a public ``mode`` service may not use ``port`` on ``cluster`` whose
    active advertising gateways are ``gateways`` (none: nothing imposed)."""
    if not gateways or all(g.allows(mode, port) for g in gateways):
        return None
    allowed = format_ranges(common_ranges(gateways)) or "none"
    what = "UDP port" if mode == "udp" else "port"
    text = (f"listen_port {port}: {what} outside the public L4 ports of cluster "
            f"{cluster}'s gateways (allowed: {allowed}")
    tls_ports = {g.tls_port for g in gateways}
    if mode == "tls" and len(tls_ports) == 1 and 0 not in tls_ports:
        text += f"; TLS also on {tls_ports.pop()}"
    return text + ")"


def pick_port(used: Collection[int], preferred: tuple[int, int],
              gateways: Sequence[GatewayPorts]) -> int | None:
    """The lowest free port in ``preferred`` (inclusive) that every gateway
    allows, else the lowest free one they allow anywhere; None if none."""
    allowed = common_ranges(gateways) if gateways else ((1, 65535),)
    first = intersect(allowed, (preferred,))
    for ranges in (first, allowed):
        for lo, hi in ranges:
            for port in range(lo, hi + 1):
                if port not in used:
                    return port
    return None
