"""A service's access restrictions and the tunnel-address test (pure; the
private gate's checks before any RPC).

- :func:`tunnel_like`: is a source address one a WireGuard peer could have
  (RFC 1918, IPv6 ULA, CGNAT 100.64.0.0/10; never loopback or link-local)?
- :class:`Restrictions`: the per-service CIDR / country / CrowdSec filter.  For
  overlay-origin requests only the CIDR steps run.  This gateway ships no geo
  database and no CrowdSec bouncer, so country rules answer ``geo_unavailable``
  and CrowdSec ``enforce`` answers ``crowdsec_unavailable`` (fail closed) on
  the public listener; ``observe`` allows.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from twisted.logger import Logger

log = Logger()

_TUNNEL_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IPAddress | None:
    """Parse and unmap (IPv4-mapped IPv6 -> IPv4); None if invalid."""
    try:
        addr = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def tunnel_like(addr: IPAddress) -> bool:
    if addr.is_loopback or addr.is_link_local:
        return False
    return any(addr in net for net in _TUNNEL_NETS)


def _networks(cidrs: Iterable[str]) -> list:
    nets = []
    for c in cidrs:
        try:
            nets.append(ipaddress.ip_network(c.strip(), strict=False))
        except ValueError:
            log.warn("skipping invalid CIDR {cidr!r} in access restrictions", cidr=c)
    return nets


class Restrictions:
    """A service's access restrictions; :meth:`check` returns a verdict string
    (``ip_restricted``, ``geo_unavailable``, ``country_restricted``,
    ``crowdsec_unavailable``) or None when allowed."""

    def __init__(
        self,
        allowed_cidrs: Iterable[str] = (),
        blocked_cidrs: Iterable[str] = (),
        allowed_countries: Iterable[str] = (),
        blocked_countries: Iterable[str] = (),
        crowdsec_mode: str = "",
    ) -> None:
        self.allowed = _networks(allowed_cidrs)
        self.blocked = _networks(blocked_cidrs)
        self.allowed_countries = {c.upper() for c in allowed_countries if c}
        self.blocked_countries = {c.upper() for c in blocked_countries if c}
        self.crowdsec_mode = crowdsec_mode or "off"

    @classmethod
    def from_proto(cls, r) -> Restrictions | None:
        """From a ``pb.AccessRestrictions``; None when nothing is configured."""
        if r is None:
            return None
        mode = r.crowdsec_mode
        if not (r.allowed_cidrs or r.blocked_cidrs or r.allowed_countries or r.blocked_countries
                or mode in ("enforce", "observe")):
            return None
        return cls(r.allowed_cidrs, r.blocked_cidrs, r.allowed_countries, r.blocked_countries,
                   mode)

    def check(self, addr: IPAddress, overlay: bool) -> str | None:
        if self.allowed and not any(addr in n for n in self.allowed):
            return "ip_restricted"
        if any(addr in n for n in self.blocked):
            return "ip_restricted"
        if overlay:
            return None
        if self.allowed_countries or self.blocked_countries:
            return "geo_unavailable"  # no geo database configured
        if self.crowdsec_mode == "enforce":
            return "crowdsec_unavailable"  # no bouncer configured: fail closed
        return None
