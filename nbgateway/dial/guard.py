"""The direct-dial guard: which host-network addresses a ``direct_upstream``
target of a given account may reach (issue 11 item 1, SSRF).

Sans-IO: plain data and functions, no sockets, no DNS, no clock.  The
Twisted adapter (:mod:`nbgateway.dial.direct`) resolves a target, asks
:meth:`DialPolicy.check` about *each resolved address* and then connects to
exactly the checked address.

Rules, in order:

1. Never the gateway's own listeners (public listener, health/metrics,
   embedded management REST and gRPC, a loopback ``--mgmt``), even when an
   allow-list entry covers them.  A listener bound to every interface
   protects its port on loopback, on the unspecified address and on every
   address the injected ``is_local`` says belongs to this host.
2. Otherwise an address is allowed only when an operator allow-list entry
   (``--direct-upstream-allow``) covers it and is scoped to the account (or
   to every account).
3. Loopback, link-local (incl. ``169.254.169.254``), unspecified
   (``0.0.0.0/8``, ``::``), multicast, reserved/broadcast (``240.0.0.0/4``)
   and IPv4-compatible IPv6 (``::a.b.c.d``) addresses need an entry that
   lies *inside* that special block (``127.0.0.1/32``, ``169.254.0.0/16``):
   a catch-all such as ``0.0.0.0/0`` or ``::/0`` does not cover them.
   IPv4-mapped IPv6 (``::ffff:a.b.c.d``) is judged -- and dialed -- as the
   IPv4 address it maps.

Allow-list syntax (comma-separated entries)::

    CIDR                      every account
    CIDR@ACCOUNT[+ACCOUNT...] only these account ids

A bare IP is a /32 (/128).  Example:
``10.0.0.0/8,192.168.5.7@acct1+acct2,127.0.0.1/32@default``.

Host spellings: :func:`parse_ip_literal` reads a target host the way libc's
``inet_aton`` reads IPv4 (``127.1``, ``0x7f000001``, ``2130706433``,
``0177.0.0.1``) and IPv6 literals with or without brackets, so a numeric
spelling never reaches DNS as a "name"; :func:`classify_host` also rejects
hosts that are neither a literal nor a valid DNS name and treats
``localhost`` / ``*.localhost`` as loopback without asking DNS.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from nbgateway.netaddr import (
    _SPECIAL,
    IPAddress,
    IPNetwork,
    nat64_embedded,
    normalize,
    special_block,
    special_reason,
)

#: the access-log verdict (``auth_mechanism``) of a refused direct dial
ACCESS_LOG_REASON = "direct_upstream_denied"

ALLOWED = "allowed"
NOT_ALLOWED = "not_allowed"          # no allow-list entry covers it for this account
GATEWAY_LISTENER = "gateway_listener"
INVALID_HOST = "invalid_host"
NO_ADDRESS = "no_address"            # the name resolved to nothing usable

DENY_REASONS = (NOT_ALLOWED, GATEWAY_LISTENER, INVALID_HOST, NO_ADDRESS,
                *dict.fromkeys(r for r, _ in _SPECIAL))

_ACCOUNT = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_NUMERIC_LABEL = re.compile(r"^(\d+|0x[0-9a-f]*)$")


# -- host spellings ---------------------------------------------------------------------------


def _aton_part(text: str) -> int | None:
    """One inet_aton component: 0x.. hex, 0.. octal, else decimal."""
    if not text:
        return None
    if text[:2] in ("0x", "0X"):
        digits = text[2:]
        if digits and not all(c in "0123456789abcdefABCDEF" for c in digits):
            return None
        return int(digits, 16) if digits else 0
    if not text.isascii() or not text.isdigit():
        return None
    if len(text) > 1 and text[0] == "0":
        if any(c in "89" for c in text):
            return None
        return int(text, 8)
    return int(text, 10)


def parse_inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """IPv4 as glibc's ``inet_aton`` reads it (1 to 4 parts; the last part
    fills the remaining bytes), or None."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_aton_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    nums: list[int] = values  # type: ignore[assignment]
    *head, last = nums
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    value = 0
    for v in head:
        value = value << 8 | v
    value = value << (8 * (4 - len(head))) | last
    return ipaddress.IPv4Address(value)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a numeric host spelling denotes (brackets, one trailing
    dot and an IPv6 zone tolerated), normalized; None for a name."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return normalize(ipaddress.IPv6Address(text))
        except ValueError:
            return None
    if text.endswith("."):
        text = text[:-1]
    return parse_inet_aton(text)


class HostKind(NamedTuple):
    """What a target host is: an address, a DNS name, or invalid."""

    ip: IPAddress | None = None
    name: str | None = None
    invalid: str | None = None  # why it is neither


LOCALHOST_ADDRESSES = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))


def classify_host(host: str) -> HostKind:
    """Literal address, resolvable name, or invalid (never sent to DNS)."""
    ip = parse_ip_literal(host)
    if ip is not None:
        return HostKind(ip=ip)
    name = host.strip().rstrip(".").lower()
    if not name.isascii():  # an internationalised name: its IDNA (punycode) form
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return HostKind(invalid="not an IP address or DNS name")
    if not name or len(name) > 253 or ":" in name or "[" in name:
        return HostKind(invalid="not an IP address or DNS name")
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return HostKind(invalid="not an IP address or DNS name")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # a numeric last label is not a host name (RFC 3696 2), and a resolver
        # might still read the whole host as a number
        return HostKind(invalid="numeric host that is not a valid IPv4 address")
    return HostKind(name=name)


def is_localhost_name(name: str) -> bool:
    """RFC 6761: ``localhost`` and its subdomains are loopback."""
    return name == "localhost" or name.endswith(".localhost")


# -- allow-list ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One allow-list entry: a network, optionally scoped to account ids."""

    network: IPNetwork
    accounts: frozenset[str] | None = None  # None = every account

    def applies_to(self, account_id: str) -> bool:
        return self.accounts is None or account_id in self.accounts

    def __str__(self) -> str:
        if self.accounts is None:
            return str(self.network)
        return f"{self.network}@{'+'.join(sorted(self.accounts))}"


def parse_allow_rule(text: str) -> AllowRule:
    cidr, sep, scope = text.strip().partition("@")
    cidr = cidr.strip()
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ValueError(f"{cidr!r} is not an IP address or CIDR") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(
            ipaddress.ip_network("::ffff:0:0/96")):
        raise ValueError(f"{cidr!r}: write IPv4-mapped networks in IPv4 form")
    accounts: frozenset[str] | None = None
    if sep:
        ids = [a.strip() for a in scope.split("+")]
        bad = [a for a in ids if not _ACCOUNT.fullmatch(a)]
        if bad or not ids:
            raise ValueError(f"{text.strip()!r}: account ids after '@' are joined by '+' "
                             "and use letters, digits, '.', '_', ':' or '-'")
        accounts = frozenset(ids)
    return AllowRule(network, accounts)


def parse_allow_list(text: str) -> tuple[AllowRule, ...]:
    """``--direct-upstream-allow``: comma-separated ``CIDR[@ACCT[+ACCT...]]``."""
    return tuple(parse_allow_rule(item) for item in text.split(",") if item.strip())


def format_allow_list(rules: Iterable[AllowRule]) -> str:
    return ",".join(str(r) for r in rules)


def loopback_rules(account_id: str) -> tuple[AllowRule, ...]:
    """Loopback (IPv4 and IPv6) for one account: the embedded default's
    operator account."""
    scope = frozenset({account_id})
    return (AllowRule(ipaddress.ip_network("127.0.0.0/8"), scope),
            AllowRule(ipaddress.ip_network("::1/128"), scope))


# -- the policy ---------------------------------------------------------------------------------


class Listener(NamedTuple):
    """A TCP listener of this gateway host; ``host`` None = every interface."""

    host: IPAddress | None
    port: int

    @classmethod
    def of(cls, host: str, port: int) -> Listener:
        """From a bind address ("" / 0.0.0.0 / :: = every interface);
        ValueError for a host that is not an address of this host's form."""
        if not host:
            return cls(None, port)
        if host == "localhost":
            return cls(ipaddress.IPv4Address("127.0.0.1"), port)
        ip = parse_ip_literal(host)
        if ip is None:
            raise ValueError(f"{host!r} is not an IP address")
        return cls(None if ip.is_unspecified else ip, port)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # ALLOWED or one of DENY_REASONS

    def __bool__(self) -> bool:
        return self.allowed


#: RFC 6052's well-known NAT64 prefix: on a host with a NAT64 path (clat,
#: jool, tayga) ``64:ff9b::a.b.c.d`` reaches the IPv4 address it embeds
#: :func:`endpoint_refusal`'s reason for an address of this host
GATEWAY_LOCAL = "gateway_local"


def endpoint_refusal(ip: IPAddress, is_local: Callable[[IPAddress], bool]) -> str | None:
    """Why the gateway must not send WireGuard packets to a peer endpoint at
    ``ip`` (a tenant sets its peers' endpoints), or None.  The special blocks
    of a direct dial (loopback, link-local, unspecified, multicast, reserved,
    IPv4-compatible; IPv4-mapped judged as IPv4, a NAT64 address also as the
    IPv4 address it reaches) and ``is_local`` addresses (this host's own,
    :data:`GATEWAY_LOCAL`) are refused; no allow-list opens them.  Private
    addresses (a peer on the LAN) are fine."""
    reason = special_reason(ip)
    if reason is not None:
        return reason
    ip = normalize(ip)
    embedded = nat64_embedded(ip)
    if is_local(ip) or (embedded is not None and is_local(embedded)):
        return GATEWAY_LOCAL
    return None


class DialPolicy:
    """Decides (account, address, port) -> :class:`Decision`.

    ``rules``: the allow-list.  ``listeners()``: this gateway's own TCP
    listeners (called at every check: ports bound later are seen).
    ``is_local(ip)``: whether an address belongs to this host (used for
    listeners bound to every interface).
    """

    def __init__(self, rules: Iterable[AllowRule] = (), *,
                 listeners: Callable[[], Iterable[Listener]] = lambda: (),
                 is_local: Callable[[IPAddress], bool] = lambda ip: False) -> None:
        self.rules = tuple(rules)
        self.listeners = listeners
        self.is_local = is_local

    def _own_listener(self, ip: IPAddress, port: int) -> bool:
        local: bool | None = None
        for listener in self.listeners():
            if listener.port != port:
                continue
            if ip.is_unspecified:
                return True  # connecting to 0.0.0.0 / :: reaches this host
            if listener.host is not None:
                if normalize(listener.host) == ip:
                    return True
                continue
            if ip.is_loopback:
                return True
            if local is None:
                local = bool(self.is_local(ip))
            if local:
                return True
        return False

    def check(self, account_id: str, ip: IPAddress, port: int) -> Decision:
        ip = normalize(ip)
        embedded = nat64_embedded(ip)
        if embedded is not None:
            # judged as what it reaches too: a special block or one of this
            # gateway's listeners behind the prefix is denied as itself; a
            # public IPv4 address still needs the IPv6 address allowed
            inner = self.check(account_id, embedded, port)
            if not inner.allowed and inner.reason != NOT_ALLOWED:
                return inner
        if self._own_listener(ip, port):
            return Decision(False, GATEWAY_LISTENER)
        special = special_block(ip)
        for rule in self.rules:
            net = rule.network
            if net.version != ip.version or ip not in net or not rule.applies_to(account_id):
                continue
            if special is not None and not net.subnet_of(special[1]):  # type: ignore[arg-type]
                continue  # a catch-all does not open a special block
            return Decision(True, ALLOWED)
        return Decision(False, special[0] if special is not None else NOT_ALLOWED)
