"""In-memory DNS authority for an account's synthetic zones (pure, no I/O).

:class:`ZoneAuthority` is built from :class:`nbgateway.mgmt.netmap.DnsZone`
values (the network map's custom zones, plus whatever the per-account runtime
adds, e.g. :func:`service_zones` for the domains it serves itself).
:meth:`ZoneAuthority.replace` builds a complete new index and swaps one
reference, so a lookup always sees either the old or the new zone set, never
a mix (the reactor thread does both anyway).

Answering rules (:meth:`ZoneAuthority.lookup`), for one question:

* the zone is the longest apex the name equals or ends with;
* no zone -> **REFUSED**: the responder is not a recursive resolver and does
  not forward (clients configured with more than one resolver move on to the
  next one; wg-quick peers get only the proxy peers' addresses as DNS);
* class other than IN (or ANY) -> REFUSED;
* the name has records of the asked type (A, AAAA, or ANY for both) ->
  NOERROR, AA, the records with their TTLs (several A records for one name:
  all of them, round robin across proxy peers is the client's job);
* the name exists (it has records, is the apex, or is an ancestor of a
  record name) but not with that type -> NOERROR/NODATA, AA, the zone's SOA
  in the authority section (negative TTL :data:`NEGATIVE_TTL`); SOA at the
  apex is answered;
* the name does not exist: authoritative zone -> NXDOMAIN, AA, SOA;
  match-only zone (upstream ``NonAuthoritative``: "names without a record
  fall through to upstream DNS") -> REFUSED, since nothing here forwards.

Bounds: at most :data:`MAX_ZONES` zones and :data:`MAX_RECORDS` records per
index (extra ones are dropped and counted in :attr:`ZoneAuthority.dropped`).

Idle accounts: :func:`account_zones` returns an :class:`AccountZones`, which
holds the account's network and served names and yields the zones when
iterated; :meth:`ZoneAuthority.replace` keeps such a source as it is and
builds the index at the first read (a query, :attr:`~ZoneAuthority.apexes`,
``len``, :attr:`~ZoneAuthority.dropped`).  An account nobody queries keeps no
index (~3.4 KiB for 10 services); the answers are the same as with an index
built at once, since the source captured its inputs when it was replaced.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from twisted.names import dns

from nbgateway.mgmt.netmap import AccountNetwork, DnsRecord, DnsZone, normalize_name

__all__ = [
    "MAX_RECORDS",
    "MAX_ZONES",
    "NEGATIVE_TTL",
    "AccountZones",
    "Answer",
    "ZoneAuthority",
    "account_zones",
    "service_zones",
]

MAX_ZONES = 1024
MAX_RECORDS = 16384
#: SOA minimum / TTL of negative answers: short, so new services resolve soon
NEGATIVE_TTL = 5
SERVICE_RECORD_TTL = 5

_QTYPES = {dns.A: (dns.A,), dns.AAAA: (dns.AAAA,), dns.ALL_RECORDS: (dns.A, dns.AAAA)}


@dataclass(frozen=True)
class Answer:
    rcode: int
    answers: tuple[dns.RRHeader, ...] = ()
    authority: tuple[dns.RRHeader, ...] = ()
    authoritative: bool = False


REFUSED = Answer(dns.EREFUSED)


class _Zone:
    """One zone's index.  Records are kept as the network map's own
    :class:`DnsRecord` values (shared with the map and its memo) and the SOA
    as its serial: the ``twisted.names`` record objects are built per answer
    (an account's peer and service records were ~1 KiB each as prebuilt
    RRHeaders).  A name maps to its one record, or to a tuple of its records
    (none: the apex and empty non-terminals; several), so indexing a map of
    one record per peer allocates nothing per record (the index is rebuilt
    for every map)."""

    __slots__ = ("apex", "authoritative", "names", "serial")

    def __init__(self, apex: str, authoritative: bool, serial: int) -> None:
        self.apex = apex
        self.authoritative = authoritative
        self.serial = serial & 0xFFFFFFFF
        #: name -> its record, or its records in insertion order; () for a
        #: name without records (the apex, empty non-terminals)
        self.names: dict[str, DnsRecord | tuple[DnsRecord, ...]] = {apex: ()}

    def records(self, name: str) -> tuple[DnsRecord, ...] | None:
        """The records of ``name`` (None when the name does not exist)."""
        got = self.names.get(name)
        return (got,) if type(got) is DnsRecord else got  # type: ignore[return-value]

    @property
    def soa(self) -> dns.RRHeader:
        bare = self.apex[:-1]
        payload = dns.Record_SOA(
            mname=f"ns.{bare}", rname=f"hostmaster.{bare}", serial=self.serial,
            refresh=300, retry=60, expire=3600, minimum=NEGATIVE_TTL, ttl=NEGATIVE_TTL,
        )
        return dns.RRHeader(name=bare, type=dns.SOA, cls=dns.IN, ttl=NEGATIVE_TTL,
                            payload=payload, auth=True)

    def add(self, rec: DnsRecord) -> None:
        # the same address in another spelling is the same record (as the
        # Record_A/AAAA equality this replaces: they compare packed addresses)
        family = socket.AF_INET if rec.type == dns.A else socket.AF_INET6
        try:
            packed = socket.inet_pton(family, rec.address)
        except OSError:
            return  # netmap only yields valid addresses of the record's type
        rrs = self.records(rec.name)
        if not rrs:
            self.names[rec.name] = rec
        elif all(r.type != rec.type or r.ttl != rec.ttl
                 or socket.inet_pton(family, r.address) != packed for r in rrs):
            self.names[rec.name] = (*rrs, rec)
        # ancestors up to the apex exist too (empty non-terminals answer NODATA)
        parent = rec.name
        while parent != self.apex:
            parent = parent.split(".", 1)[1]
            self.names.setdefault(parent, ())

    def answers(self, name: str, rtype: int) -> list[dns.RRHeader]:
        """The records of ``name`` and ``rtype`` as ``twisted.names`` objects."""
        make = dns.Record_A if rtype == dns.A else dns.Record_AAAA
        bare = name[:-1]
        return [dns.RRHeader(name=bare, type=rtype, cls=dns.IN, ttl=r.ttl,
                             payload=make(r.address, r.ttl), auth=True)
                for r in self.records(name) or () if r.type == rtype]


#: the index of no zones (never mutated: an index is built whole and swapped)
_NO_ZONES: Mapping[str, _Zone] = MappingProxyType({})


class ZoneAuthority:
    """The zones of one account; see the module docstring."""

    __slots__ = ("_dropped", "_pending", "_zones", "serial")

    def __init__(self, zones: Iterable[DnsZone] = (), serial: int = 0) -> None:
        self._zones: Mapping[str, _Zone] = _NO_ZONES
        #: an :class:`AccountZones` replaced but not indexed yet
        self._pending: AccountZones | None = None
        self.serial = 0
        self._dropped = 0
        self.replace(zones, serial)

    @property
    def apexes(self) -> tuple[str, ...]:
        return tuple(self._index())

    def __len__(self) -> int:
        return len(self._index())

    @property
    def dropped(self) -> int:
        """Zones and records left out of the current index (bounds, bad names,
        types other than A/AAAA, records outside their zone)."""
        self._index()
        return self._dropped

    def replace(self, zones: Iterable[DnsZone], serial: int | None = None) -> None:
        """Atomically replace every zone (the SOA serial is ``serial`` or +1).
        An :class:`AccountZones` source is indexed at the first read."""
        serial = self.serial + 1 if serial is None else serial
        if type(zones) is AccountZones:
            self._pending = zones
            self._zones = _NO_ZONES
            self.serial = serial
            self._dropped = 0
            return
        self._pending = None
        self._build(zones, serial)

    def _index(self) -> Mapping[str, _Zone]:
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._build(pending, self.serial)
        return self._zones

    def _build(self, zones: Iterable[DnsZone], serial: int) -> None:
        index: dict[str, _Zone] = {}
        dropped = 0
        budget = MAX_RECORDS
        for z in zones:
            apex = normalize_name(z.domain)
            if apex is None:
                dropped += 1
                continue
            zone = index.get(apex)
            if zone is None:
                if len(index) >= MAX_ZONES:
                    dropped += 1 + len(z.records)
                    continue
                zone = index[apex] = _Zone(apex, z.authoritative, serial)
            elif z.authoritative:
                zone.authoritative = True
            for rec in z.records:
                if budget <= 0 or rec.type not in (dns.A, dns.AAAA):
                    dropped += 1
                    continue
                if not (rec.name == apex or rec.name.endswith("." + apex)):
                    dropped += 1
                    continue
                zone.add(rec)
                budget -= 1
        self._zones = index if index else _NO_ZONES
        self.serial = serial
        self._dropped = dropped

    def find_zone(self, name: str) -> _Zone | None:
        zones = self._index()
        if not zones:
            return None
        labels = name[:-1].split(".")
        for i in range(len(labels)):
            zone = zones.get(".".join(labels[i:]) + ".")
            if zone is not None:
                return zone
        return None

    def lookup(self, qname: bytes | str, qtype: int, qclass: int = dns.IN) -> Answer:
        """Answer one question (see the module docstring for the rules)."""
        if isinstance(qname, bytes):
            try:
                qname = qname.decode("ascii")
            except UnicodeDecodeError:
                return REFUSED
        name = normalize_name(qname)
        if name is None:
            return REFUSED
        zone = self.find_zone(name)
        if zone is None or qclass not in (dns.IN, dns.ANY):
            return REFUSED
        rrs = zone.records(name)
        if rrs is None:
            if not zone.authoritative:
                return REFUSED
            return Answer(dns.ENAME, authority=(zone.soa,), authoritative=True)
        answers: list[dns.RRHeader] = []
        for t in _QTYPES.get(qtype, ()):
            if any(rr.type == t for rr in rrs):
                answers.extend(zone.answers(name, t))
        if name == zone.apex and qtype in (dns.SOA, dns.ALL_RECORDS):
            answers.append(zone.soa)
        if answers:
            return Answer(dns.OK, answers=tuple(answers), authoritative=True)
        return Answer(dns.OK, authority=(zone.soa,), authoritative=True)


def service_zones(
    domains: Iterable[str], addresses: Iterable[str], ttl: int = SERVICE_RECORD_TTL,
) -> tuple[DnsZone, ...]:
    """One authoritative zone per served domain, whose apex answers with the
    gateway's own tunnel ``addresses`` (A for IPv4, AAAA for IPv6).  This is
    what a peer that uses the proxy peer as its resolver needs for the
    private services the proxy serves (the network map only carries these
    records for member peers, never for the proxy peer itself)."""
    recs_for: list[tuple[int, str]] = []
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            continue
        recs_for.append((dns.A if addr.version == 4 else dns.AAAA, str(addr)))
    out: dict[str, DnsZone] = {}
    for domain in domains:
        apex = normalize_name(domain)
        if apex is None or apex.startswith("*."):
            continue
        out[apex] = DnsZone(
            apex, tuple(DnsRecord(apex, t, ttl, a) for t, a in recs_for), authoritative=True,
        )
    return tuple(out.values())


class AccountZones:
    """The zones of :func:`account_zones`, made when iterated (each time):
    holds the network and the served names only, so a
    :class:`ZoneAuthority` can defer its index to the first query."""

    __slots__ = ("domains", "network")

    def __init__(self, network: AccountNetwork, served_domains: Iterable[str]) -> None:
        self.network = network
        self.domains = tuple(served_domains)

    def __iter__(self) -> Iterator[DnsZone]:
        return iter(_account_zones(self.network, self.domains))

    def __repr__(self) -> str:
        return f"AccountZones(serial={self.network.serial}, domains={len(self.domains)})"


def account_zones(network: AccountNetwork, served_domains: Iterable[str]) -> AccountZones:
    """The zones the account's responder serves: the served domains pointing at
    the gateway's own tunnel addresses (:func:`service_zones`) plus the
    network map's zones (the account peers zone and any synthetic zones);
    made when the result is iterated (:class:`AccountZones`).

    Gateway pairs: when the map names other addresses for a served domain
    (management sends a gateway the records of every connected gateway of its
    cluster), the served domain answers with all of them, its own first, so a
    stock client whose first address fails tries the next gateway."""
    return AccountZones(network, served_domains)


def _account_zones(network: AccountNetwork, served_domains: Iterable[str]) -> tuple[DnsZone, ...]:
    apexes = [a for a in (normalize_name(d) for d in served_domains) if a is not None]
    # only the served names' addresses: no list per record of the map
    wanted = set(apexes)
    named: dict[str, list[str]] = {}
    if wanted:
        for zone in network.zones:
            for rec in zone.records:
                if rec.name in wanted:
                    named.setdefault(rec.name, []).append(rec.address)
    own = network.addresses
    zones: dict[str, DnsZone] = {}
    for apex in apexes:
        if apex in zones:
            continue
        for zone in service_zones([apex], dict.fromkeys((*own, *named.get(apex, ())))):
            zones[zone.domain] = zone
    return (*zones.values(), *network.zones)
